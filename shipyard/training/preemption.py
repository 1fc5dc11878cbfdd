"""SIGTERM during training: finish the current step, checkpoint, then let the signal do what it would have.

Kubernetes sends SIGTERM when it evicts or preempts the training pod and SIGKILLs it a grace period
later. The guard only records the signal; the loop notices at the next step boundary, writes a
checkpoint and calls :meth:`PreemptionGuard.deliver`, which restores the handler that was installed before
(Prefect's engine bridge in a flow run, the default in a plain process) and re-raises the signal to it.
So a plain process still dies of SIGTERM (exit 143) and a Prefect flow run still reports it as Prefect
intends, only now with a checkpoint to resume from.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from shipyard.errors import TrainingError

log = logging.getLogger(__name__)


class Preempted(TrainingError):
    """Training stopped on SIGTERM after writing a checkpoint; a rerun resumes from it."""


class PreemptionGuard:
    """Context manager that turns SIGTERM into a flag the training loop polls between steps."""

    def __init__(self) -> None:
        self.requested = False
        self.on_signal: Callable[[], None] | None = None  # e.g. forward the signal to child processes
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        else:
            log.warning("training runs off the main thread: SIGTERM will not write a checkpoint first")
        return self

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.on_signal is not None:
            self.on_signal()

    def restore(self) -> None:
        """Put back the SIGTERM handler that was there before."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def deliver(self, where: str) -> None:
        """Restore the previous handler and hand it the SIGTERM; raise Preempted if it returns or ignores it."""
        self.restore()
        if callable(self._previous) or self._previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGTERM)
        raise Preempted(f"training preempted by SIGTERM; {where} (rerun to resume)")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()
        if self.requested and exc is None and (callable(self._previous) or self._previous == signal.SIG_DFL):
            # The signal came after the last step: the work is saved, so let it act now rather than swallow it.
            signal.raise_signal(signal.SIGTERM)
