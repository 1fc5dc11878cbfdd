"""Background services on this machine (Prefect server, MLflow UI, worker, inference server).

Each runs in its own session so that it outlives the command that started it; its pid, URL and log
live in ``<home>/run/<name>.json`` so that later commands (``status``, ``down``) can find it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
from pydantic import BaseModel

from shipyard.errors import ShipyardError

log = logging.getLogger(__name__)


class Service(BaseModel):
    """A background process started by Shipyard."""

    name: str
    pid: int
    url: str | None
    log_path: str
    info: dict[str, str] = {}


def _record(home: Path, name: str) -> Path:
    return home / "run" / f"{name}.json"


def alive(pid: int) -> bool:
    """Tell whether a process is running (reaping it if it is our exited child)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def answers(url: str, timeout: float = 2) -> bool:
    """Tell whether ``url`` answers with a 2xx status."""
    try:
        return httpx.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


def spawn(home: Path, name: str, cmd: Sequence[str], *, health_url: str | None, url: str | None = None,
          env: Mapping[str, str] | None = None, timeout: float = 120, info: dict[str, str] | None = None,
          error: type[ShipyardError] = ShipyardError) -> Service:
    """Start ``cmd`` in the background and wait until ``health_url`` answers (if given)."""
    log_path = home / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    service = Service(name=name, pid=proc.pid, url=url, log_path=str(log_path), info=info or {})
    deadline = time.monotonic() + timeout
    while health_url is not None and not answers(health_url, timeout=1):
        if proc.poll() is not None:
            raise error(f"{name} exited with code {proc.returncode} before answering {health_url} (see {log_path})")
        if time.monotonic() > deadline:
            terminate(proc.pid)
            raise error(f"{name} did not answer {health_url} within {timeout:.0f}s (see {log_path})")
        time.sleep(0.3)
    record = _record(home, name)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(service.model_dump_json(indent=2))
    log.info("%s started (pid %d)%s", name, proc.pid, f" at {url}" if url else "")
    return service


def wait_ready(service: Service, health_url: str, timeout: float, error: type[ShipyardError] = ShipyardError) -> None:
    """Wait until a service started without waiting (``spawn(health_url=None)``) answers ``health_url``."""
    deadline = time.monotonic() + timeout
    while not answers(health_url, timeout=1):
        if not alive(service.pid):
            raise error(f"{service.name} exited before answering {health_url} (see {service.log_path})")
        if time.monotonic() > deadline:
            raise error(f"{service.name} did not answer {health_url} within {timeout:.0f}s (see {service.log_path}; "
                        "it keeps starting in the background: try again in a minute)")
        time.sleep(0.2)


def find(home: Path, name: str) -> Service | None:
    """Return the recorded service if its process still runs."""
    record = _record(home, name)
    if not record.exists():
        return None
    service = Service.model_validate_json(record.read_text())
    return service if alive(service.pid) else None


def terminate(pid: int, grace: float = 10) -> None:
    """Stop a process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def stop(home: Path, name: str) -> Service | None:
    """Stop a recorded service and forget it; return it if it was running."""
    record = _record(home, name)
    if not record.exists():
        return None
    service = Service.model_validate_json(record.read_text())
    running = alive(service.pid)
    if running:
        terminate(service.pid)
    record.unlink(missing_ok=True)
    return service if running else None
