"""Start and stop the real servers tests talk to (S3-compatible, MLflow) as subprocesses on 127.0.0.1."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

# Under pytest-xdist each worker draws from a block of its own, below the kernel's ephemeral range (32768+):
# a port one worker chose and has not bound yet can never be handed to another worker, or to a bind to port 0.
_BLOCK, _FIRST = 4000, 16000


def free_port() -> int:
    """Return a TCP port nobody listens on right now (from this xdist worker's own block, when there is one)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    first = _FIRST + int(worker[2:]) * _BLOCK
    for port in random.sample(range(first, first + _BLOCK), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{first + _BLOCK - 1} for xdist worker {worker}")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path | None = None) -> None:
    """Wait until ``url`` answers 2xx, failing early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server for {url} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def start(cmd: list[str], health_url: str, log: Path, env: Mapping[str, str] | None = None,
          timeout: float = 60) -> subprocess.Popen[bytes]:
    """Start a server process, logging to ``log``, and wait for its health URL."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
    wait_http(health_url, proc, timeout, log)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server process and wait for it."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def moto_command(port: int) -> list[str]:
    """Return the command that runs moto's S3-compatible server."""
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def mlflow_command(port: int, db: Path, artifacts: str) -> list[str]:
    """Return the command that runs an MLflow tracking server on SQLite with artifacts in ``artifacts``."""
    mlflow = Path(sys.executable).with_name("mlflow")
    return [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", artifacts]
