"""Run training as torchrun workers (one per GPU) from the process that would otherwise train in-process."""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from shipyard.errors import TrainingError
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.storage import Store
from shipyard.training.metrics import EpochMetrics
from shipyard.training.preemption import PreemptionGuard
from shipyard.training.trainer import TrainResult, cached_result, train

log = logging.getLogger(__name__)

def run_workers(nproc: int, dataset: str, version: str, params: TrainParams, data_dir: Path,
                on_line: Callable[[str], None] = log.info, key: str | None = None) -> None:
    """Train with ``nproc`` workers on this node, passing each output line to ``on_line``.

    A SIGTERM to this process is forwarded to torchrun (which forwards it to the workers, which checkpoint),
    then delivered here once they exited.
    """
    with tempfile.TemporaryDirectory(prefix="shipyard-train-") as tmp:
        params_file = Path(tmp) / "params.json"
        params_file.write_text(params.model_dump_json())
        from shipyard.training.distributed import torchrun_command

        command = torchrun_command(nproc, dataset, version, params_file, data_dir, key)
        log.info("starting %d training workers: %s", nproc, " ".join(command))
        tail: deque[str] = deque(maxlen=5)
        with PreemptionGuard() as guard, subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            guard.on_signal = proc.terminate  # torchrun forwards it to every worker
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip())
                on_line(line.rstrip())
            code = proc.wait()
            if guard.requested:
                guard.deliver(f"{nproc} workers stopped with exit code {code}")
        if code != 0:
            shown = next((t for t in reversed(tail) if t.startswith("error:")), tail[-1] if tail else "")
            raise TrainingError(f"{nproc} training workers exited with code {code}: {shown}")


def train_on_this_node(store: Store, dataset: DatasetRef, params: TrainParams, data_dir: Path, key: str,
                       on_line: Callable[[str], None] = log.info) -> TrainResult:
    """Train under ``key`` with one torchrun worker per visible GPU, or in this process; return the result."""
    from shipyard.training.distributed import processes_for, visible_gpus  # torch: only when training here

    nproc = processes_for(visible_gpus())
    if nproc <= 1:
        return train(store, dataset, params, data_dir, on_epoch=lambda e: on_line(epoch_line(e, params.epochs)),
                     key=key)
    run_workers(nproc, dataset.name, dataset.version, params, data_dir, on_line=on_line, key=key)
    result = cached_result(store, key)
    if result is None:
        raise TrainingError(f"training workers finished but wrote no result under {store.url('training', key)}")
    return result


def epoch_line(entry: EpochMetrics, epochs: int) -> str:
    """Return the log line of one finished epoch."""
    shown = " ".join(f"{k}={v:.4f}" for k, v in entry.metrics.items())
    return f"epoch {entry.epoch}/{epochs} train_loss={entry.train_loss:.4f} {shown} ({entry.seconds:.2f}s)"
