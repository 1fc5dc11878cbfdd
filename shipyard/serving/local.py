"""The local inference server: start it on a model version, smoke-test it, roll back on failure.

State lives in ``<home>/serving/server.json`` so that ``shipyard status`` and ``shipyard down`` find the
server a previous command started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from shipyard.errors import ServingError
from shipyard.settings import Settings

log = logging.getLogger(__name__)


class ServerState(BaseModel):
    """A running local inference server."""

    pid: int
    host: str
    port: int
    model_name: str
    model_version: str
    model_uri: str
    log_path: str

    @property
    def url(self) -> str:
        """Return the server's base URL."""
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Rollout:
    """The outcome of rolling a version out to the local server."""

    state: ServerState
    reused: bool
    predictions: list[Any] | None


def _state_path(settings: Settings) -> Path:
    return settings.home / "serving" / "server.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child still answers kill(0): reap it if it is ours
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def current(settings: Settings) -> ServerState | None:
    """Return the running server, if its process is alive and answers /version."""
    path = _state_path(settings)
    if not path.exists():
        return None
    state = ServerState.model_validate_json(path.read_text())
    if not _alive(state.pid):
        return None
    try:
        info = httpx.get(f"{state.url}/version", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    return state if str(info.get("model_version")) == state.model_version else None


def start(settings: Settings, model_name: str, version: str, tracking_uri: str, timeout: float = 180) -> ServerState:
    """Start a server on ``models:/name/version`` and wait until it answers /ping."""
    directory = settings.home / "serving"
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "server.log"
    model_uri = f"models:/{model_name}/{version}"
    cmd = [sys.executable, "-m", "shipyard.serving", "--model-uri", model_uri, "--model-name", model_name,
           "--model-version", version, "--tracking-uri", tracking_uri,
           "--host", settings.inference_host, "--port", str(settings.inference_port)]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    state = ServerState(pid=proc.pid, host=settings.inference_host, port=settings.inference_port,
                        model_name=model_name, model_version=version, model_uri=model_uri, log_path=str(log_path))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServingError(f"inference server for {model_uri} exited with code {proc.returncode} (see {log_path})")
        try:
            if httpx.get(f"{state.url}/ping", timeout=1).status_code == 200:
                _state_path(settings).write_text(state.model_dump_json(indent=2))
                log.info("inference server for %s is up at %s (pid %d)", model_uri, state.url, proc.pid)
                return state
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    _kill(proc.pid)
    raise ServingError(f"inference server for {model_uri} did not answer {state.url}/ping within {timeout:.0f}s (see {log_path})")


def _kill(pid: int, grace: float = 10) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def stop(settings: Settings) -> ServerState | None:
    """Stop the local server, if one runs; return what was stopped."""
    path = _state_path(settings)
    if not path.exists():
        return None
    state = ServerState.model_validate_json(path.read_text())
    _kill(state.pid)
    path.unlink(missing_ok=True)
    return state


def smoke_test(url: str, example: list[list[float]]) -> list[Any]:
    """Send one request in MLflow's scoring format and check the answer has one prediction per row."""
    try:
        resp = httpx.post(f"{url}/invocations", json={"inputs": example}, timeout=30)
    except httpx.HTTPError as exc:
        raise ServingError(f"smoke test of {url}/invocations failed: {exc}") from exc
    if resp.status_code != 200:
        raise ServingError(f"smoke test of {url}/invocations got HTTP {resp.status_code}: {resp.text[:200]}")
    predictions = resp.json().get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(example):
        raise ServingError(f"smoke test of {url}/invocations got {json.dumps(resp.json())[:200]}")
    return predictions


def roll_out(settings: Settings, model_name: str, version: str, tracking_uri: str,
             example: list[list[float]] | None) -> Rollout:
    """Serve ``version``; reuse a server already on it; on a failed start or smoke test, restore the old one."""
    running = current(settings)
    if running and running.model_name == model_name and running.model_version == version:
        log.info("inference server already serves %s version %s at %s; reusing it", model_name, version, running.url)
        return Rollout(state=running, reused=True, predictions=smoke_test(running.url, example) if example else None)
    previous = stop(settings)
    try:
        state = start(settings, model_name, version, tracking_uri)
        predictions = smoke_test(state.url, example) if example else None
    except ServingError:
        stop(settings)
        if previous is not None:
            log.warning("rolling back to %s version %s", previous.model_name, previous.model_version)
            start(settings, previous.model_name, previous.model_version, tracking_uri)
        raise
    return Rollout(state=state, reused=False, predictions=predictions)
