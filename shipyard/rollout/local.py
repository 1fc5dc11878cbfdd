"""The local target: one long-lived server on this machine that swaps versions without dropping a request.

A rollout never stops the server. It asks the running server (token-guarded ``/admin``) to load the
new version beside the live one and warm it on the input example, compares the candidate's answers
with ``mlflow.pyfunc.load_model``'s on the same rows, and only then promotes it: one switch inside
the server, after which the old version is released. Any failure before the switch drops the
candidate, so the old version never stopped serving. The server is the background service
``inference`` (see :mod:`shipyard.processes`), so ``shipyard status`` and ``shipyard down`` find it.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from typing import Any

import httpx

from shipyard import processes
from shipyard.errors import ConfigError, ServingError
from shipyard.processes import Service
from shipyard.rollout.base import Live, ModelRef, RolloutResult
from shipyard.rollout.smoke import check_answers, reference_predictions
from shipyard.settings import Settings

log = logging.getLogger(__name__)

NAME = "inference"
TOKEN_FILE = "serving-token"  # noqa: S105 - a file name, not a secret
ADMIN_TIMEOUT = 600.0  # loading a large model from a remote store takes minutes
SERVER_START_TIMEOUT = 120.0  # an empty server answering /livez (imports only)


def serving_token(settings: Settings) -> str:
    """Return the swap token: the setting, else ``<home>/serving-token`` (created once, mode 0600)."""
    if settings.serving_token:
        return settings.serving_token
    path = settings.home / TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)  # create-only: a concurrent creator's token wins, ours is dropped
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by other users; run: chmod 600 {path}")
    return path.read_text().strip()


class LocalTarget:
    """Serve versions from one hot-swapping server process on 127.0.0.1."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = f"http://{settings.inference_host}:{settings.inference_port}"

    def live(self) -> Live | None:
        """Return what the running server answers on /version, or None."""
        service = processes.find(self.settings.home, NAME)
        if service is None or service.url is None:
            return None
        try:
            info = httpx.get(f"{service.url}/version", timeout=5).raise_for_status().json()
        except (httpx.HTTPError, ValueError):
            return None
        detail = {"pid": str(service.pid), "model_uri": str(info.get("model_uri")),
                  "run_id": str(info.get("run_id")), "dataset_version": str(info.get("dataset_version"))}
        if info.get("previous_model_version"):
            detail["previous_version"] = str(info["previous_model_version"])
        model = ModelRef(model_name=str(info["model_name"]), version=str(info["model_version"]))
        return Live(target=self.name, model=model, endpoint=str(service.url), detail=detail)

    def roll_out(self, model: ModelRef, example: list[list[float]] | None) -> RolloutResult:
        """Serve ``model``: load and warm it beside the live version, check its answers, then switch.

        The check runs on ``example``, or on the model's own input example when it is None.
        """
        before = self.live()
        previous = before.model if before else None
        if before is not None and before.model == model:
            log.info("%s version %s already serves at %s; reusing it", model.model_name, model.version, self.url)
            answers = self._predict("/invocations", example) if example else None
            return RolloutResult(target=self.name, model=model, previous=previous, endpoint=before.endpoint,
                                 reused=True, predictions=answers)
        service, started = self._server()
        try:
            # Without an example the server warms on the model's own input example and says which rows.
            example, predictions = self._stage(model, example)
            live_answers = self._predict("/invocations", example) if before else None
            expected = reference_predictions(model.uri, example, self.settings.resolved_mlflow_uri())
            check_answers(model.uri, example, predictions, expected, live_answers)
            self._admin("POST", "/admin/promote", {"model_uri": model.uri})
        except ServingError as exc:
            self._admin("DELETE", "/admin/candidate", {"model_uri": model.uri}, check=False)
            if started:
                processes.stop(self.settings.home, NAME)
            still = f"; still serving version {previous.version}" if previous else ""
            raise ServingError(f"{model.model_name} version {model.version} was not rolled out: {exc}{still}") from exc
        processes.annotate(self.settings.home, NAME, {"model_name": model.model_name, "model_version": model.version,
                                                      "model_uri": model.uri})
        log.info("%s version %s now serves at %s (was %s)", model.model_name, model.version, service.url,
                 previous.version if previous else "nothing")
        return RolloutResult(target=self.name, model=model, previous=previous, endpoint=self.url, reused=False,
                             predictions=predictions)

    def stop(self) -> Service | None:
        """Stop the server, if one runs; return what was stopped."""
        return processes.stop(self.settings.home, NAME)

    def start(self) -> Service | None:
        """Start an empty server in the background, without waiting for it; None if one runs already.

        The next rollout waits for it to answer, so a command that knows a rollout is coming can overlap the
        server's start (seconds of imports) with other work.
        """
        if processes.find(self.settings.home, NAME) is not None:
            return None
        return self._spawn(wait=False)

    def stop_if_idle(self) -> Service | None:
        """Stop the server if it serves no version (one started ahead of a rollout that never came)."""
        return None if self.live() is not None else self.stop()

    def _server(self) -> tuple[Service, bool]:
        """Return the running server, or start an empty one; the flag says whether it was started now."""
        found = processes.find(self.settings.home, NAME)
        if found is not None:  # perhaps still starting (see start)
            processes.wait_ready(found, f"{self.url}/livez", SERVER_START_TIMEOUT, error=ServingError)
            return found, False
        return self._spawn(wait=True), True

    def _spawn(self, wait: bool) -> Service:
        if processes.answers(f"{self.url}/livez") or processes.answers(f"{self.url}/ping"):
            raise ServingError(f"port {self.settings.inference_port} is taken by another server "
                               "(set SHIPYARD_INFERENCE_PORT)")
        cmd = [sys.executable, "-m", "shipyard.serving", "--host", self.settings.inference_host,
               "--port", str(self.settings.inference_port)]
        uri = self.settings.resolved_mlflow_uri()
        # Secrets travel in the environment, never on the command line (visible to every user in ps).
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
               "SHIPYARD_SERVING_TOKEN": serving_token(self.settings)}
        return processes.spawn(self.settings.home, NAME, cmd, health_url=f"{self.url}/livez" if wait else None,
                               url=self.url, env=env, timeout=SERVER_START_TIMEOUT, error=ServingError)

    def _stage(self, model: ModelRef, example: list[list[float]] | None) -> tuple[list[list[float]], list[Any]]:
        """Load and warm ``model`` as the candidate; return the rows it warmed on and its answers."""
        answer = self._admin("POST", "/admin/candidate", {"model_uri": model.uri, "model_name": model.model_name,
                                                          "model_version": model.version, "example": example})
        return answer["example"], answer["predictions"]

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None, check: bool = True) -> Any:
        headers = {"Authorization": f"Bearer {serving_token(self.settings)}"}
        try:
            resp = httpx.request(method, f"{self.url}{path}", json=body, headers=headers, timeout=ADMIN_TIMEOUT)
        except httpx.HTTPError as exc:
            if not check:
                return None
            raise ServingError(f"{self.url}{path} failed: {exc}") from exc
        if check and resp.status_code != 200:
            raise ServingError(_message(resp))
        return resp.json()

    def _predict(self, path: str, example: list[list[float]] | None) -> list[Any]:
        try:
            resp = httpx.post(f"{self.url}{path}", json={"inputs": example}, timeout=ADMIN_TIMEOUT)
        except httpx.HTTPError as exc:
            raise ServingError(f"{self.url}{path} failed: {exc}") from exc
        if resp.status_code != 200:
            raise ServingError(f"{self.url}{path} answered {_message(resp)}")
        predictions: list[Any] = resp.json()["predictions"]
        return predictions


def _message(resp: httpx.Response) -> str:
    try:
        return f"HTTP {resp.status_code}: {resp.json()['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:300]}"


def stop(settings: Settings) -> Service | None:
    """Stop the local server, if one runs (``shipyard down``)."""
    return LocalTarget(settings).stop()


__all__ = ["NAME", "LocalTarget", "serving_token", "stop"]
