"""The local inference server: start it on a model version, smoke-test it, roll back on failure.

It runs as the background service ``inference`` (see :mod:`shipyard.processes`), so ``shipyard status``
and ``shipyard down`` find the server a previous command started.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

import httpx

from shipyard import processes
from shipyard.errors import ServingError
from shipyard.processes import Service
from shipyard.settings import Settings

log = logging.getLogger(__name__)

NAME = "inference"


@dataclass(frozen=True)
class Rollout:
    """The outcome of rolling a version out to the local server."""

    service: Service
    model_name: str
    model_version: str
    reused: bool
    predictions: list[Any] | None

    @property
    def url(self) -> str:
        """Return the endpoint's base URL."""
        return str(self.service.url)


def current(settings: Settings) -> Service | None:
    """Return the running server if it is alive and answers /version as it was recorded."""
    service = processes.find(settings.home, NAME)
    if service is None or service.url is None:
        return None
    try:
        info = httpx.get(f"{service.url}/version", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    return service if str(info.get("model_version")) == service.info.get("model_version") else None


def start(settings: Settings, model_name: str, version: str, tracking_uri: str, timeout: float = 180) -> Service:
    """Start a server on ``models:/name/version`` and wait until it answers /ping."""
    model_uri = f"models:/{model_name}/{version}"
    url = f"http://{settings.inference_host}:{settings.inference_port}"
    cmd = [sys.executable, "-m", "shipyard.serving", "--model-uri", model_uri, "--model-name", model_name,
           "--model-version", version, "--host", settings.inference_host, "--port", str(settings.inference_port)]
    # The tracking URI may carry credentials: hand it over in the environment, not on the command line.
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    if processes.answers(f"{url}/ping"):
        raise ServingError(f"port {settings.inference_port} is taken by another server (set SHIPYARD_INFERENCE_PORT)")
    return processes.spawn(settings.home, NAME, cmd, health_url=f"{url}/ping", url=url, env=env, timeout=timeout,
                           info={"model_name": model_name, "model_version": version, "model_uri": model_uri},
                           error=ServingError)


def stop(settings: Settings) -> Service | None:
    """Stop the local server, if one runs; return what was stopped."""
    return processes.stop(settings.home, NAME)


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
    if running and running.info.get("model_name") == model_name and running.info.get("model_version") == version:
        log.info("inference server already serves %s version %s at %s; reusing it", model_name, version, running.url)
        predictions = smoke_test(str(running.url), example) if example else None
        return Rollout(running, model_name, version, reused=True, predictions=predictions)
    previous = stop(settings)
    try:
        service = start(settings, model_name, version, tracking_uri)
        predictions = smoke_test(str(service.url), example) if example else None
    except ServingError:
        stop(settings)
        if previous is not None:
            log.warning("rolling back to %s version %s", previous.info["model_name"], previous.info["model_version"])
            start(settings, previous.info["model_name"], previous.info["model_version"], tracking_uri)
        raise
    return Rollout(service, model_name, version, reused=False, predictions=predictions)
