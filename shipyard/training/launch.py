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
from shipyard.training.distributed import torchrun_command
from shipyard.training.preemption import PreemptionGuard

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
