"""Train on this node, once per training key: as torchrun workers (one per GPU), or in this process.

Two pipelines that ask for the same training at once (same data, params and code: same key) train it once.
Training holds a claim on the key in the store (``training/<key>/claims``, a create-only lease that beats
while the run lives); the other waits for it, then finds the finished result and returns it. A claimant
killed with -9 stops beating: its claim expires and the next one resumes from the newest checkpoint.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from shipyard.errors import TrainingError
from shipyard.lease import lease
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.storage import Store
from shipyard.training.metrics import EpochMetrics
from shipyard.training.preemption import PreemptionGuard
from shipyard.training.trainer import TrainResult, cached_result, train, training_prefix

log = logging.getLogger(__name__)

# A claim beats every HEARTBEAT seconds; one that missed beats for CLAIM_TTL seconds belongs to a dead run.
HEARTBEAT = 20.0
CLAIM_TTL = 180.0


def train_once(store: Store, dataset: DatasetRef, params: TrainParams, key: str, pull: Callable[[], Path],
               on_line: Callable[[str], None] = log.info) -> tuple[TrainResult, bool]:
    """Train under ``key`` unless another run does or did; return the result and whether another run trained it.

    ``pull`` fetches the dataset (called only when this run trains).
    """
    def waiting(holder: str) -> None:
        on_line(f"training {key} is claimed by another run ({holder}); waiting for its result")

    with lease(store, (*training_prefix(key), "claims"), purpose=f"train {key}", ttl=CLAIM_TTL, wait=None,
               poll=1.0, heartbeat=HEARTBEAT, error=TrainingError, on_wait=waiting):
        finished = cached_result(store, key)
        if finished is not None:
            return finished, True
        return train_on_this_node(store, dataset, params, pull(), key, on_line=on_line), False


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
