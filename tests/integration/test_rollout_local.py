"""The local rollout target against a real inference server and a SQLite registry: no MLflow or Prefect server.

One registry and one inference server (``python -m shipyard.serving``, started by the first rollout) for the
module, so the rollback decisions of `LocalTarget.roll_out` are checked in seconds. The registry holds two
digits-shaped MLPs, one that answers 3 columns where they answer 10, and one whose artifacts are gone. The
same target under load, with the champion and a Prefect flow, is in tests/integration/test_serving_rollout.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from shipyard import processes
from shipyard.errors import ServingError
from shipyard.registry import PIP_REQUIREMENTS
from shipyard.rollout import local
from shipyard.rollout.base import ModelRef
from shipyard.rollout.local import LocalTarget, serving_token
from shipyard.settings import Settings
from tests import servers
from tests.serving_models import EXAMPLE, mlp, register_torch

NAME = "digits"
ROWS = EXAMPLE.tolist()


@dataclass(frozen=True)
class Versions:
    """The registry's URI and its versions of NAME."""

    uri: str
    good: tuple[ModelRef, ModelRef]  # mlp(seed=1), mlp(seed=2)
    three_columns: ModelRef
    gone: ModelRef


def _register_three_columns(uri: str) -> str:
    """Register a model that answers 3 columns per row, as a model trained for another task would."""
    torch.manual_seed(3)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(nn.Sequential(nn.Linear(64, 3), nn.Softmax(dim=1)), name="model",
                                        input_example=EXAMPLE, pip_requirements=PIP_REQUIREMENTS)
    return str(mlflow.register_model(info.model_uri, NAME).version)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow's default experiment keeps its artifacts under ./mlruns
        v1, v2 = (register_torch(uri, NAME, seed=seed) for seed in (1, 2))
        three = _register_three_columns(uri)
        gone = MlflowClient(uri, registry_uri=uri).create_model_version(NAME, source=(root / "gone").as_uri())
    # A rollout must find the registry through its settings, not through what this process told MLflow.
    mlflow.set_tracking_uri(before)
    ref = [ModelRef(model_name=NAME, version=v) for v in (v1, v2, three, str(gone.version))]
    return Versions(uri=uri, good=(ref[0], ref[1]), three_columns=ref[2], gone=ref[3])


@pytest.fixture(scope="module")
def target(versions: Versions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    """A target whose server, once a rollout started it, lives for the module."""
    settings = Settings(home=tmp_path_factory.mktemp("home"), mlflow_tracking_uri=versions.uri,
                        inference_port=servers.free_port())
    target = LocalTarget(settings)
    yield target
    target.stop()


def _answers(seed: int, rows: list[list[float]] = ROWS) -> np.ndarray:
    """What ``mlp(seed)``, the registered weights, answers for ``rows``."""
    with torch.no_grad():
        return mlp(seed)(torch.tensor(rows, dtype=torch.float32)).numpy()


def _version(target: LocalTarget) -> tuple[str, str | None]:
    """Return the served version and the one served before, as the server says on /version."""
    info = httpx.get(f"{target.url}/version", timeout=10).raise_for_status().json()
    return info["model_version"], info["previous_model_version"]


def _server(target: LocalTarget) -> processes.Service:
    service = processes.find(target.settings.home, local.NAME)
    assert service is not None
    return service


def test_a_version_goes_live_is_reused_while_it_serves_and_gives_way_to_the_next(
        target: LocalTarget, versions: Versions, caplog: pytest.LogCaptureFixture) -> None:
    target.stop()  # nothing serves, whichever test ran before
    caplog.set_level(logging.INFO, logger=local.__name__)
    v1, v2 = versions.good
    first = target.roll_out(v1, None)  # no example: the server warms on the model's own input example
    assert (first.target, first.model, first.previous, first.endpoint, first.reused) == (
        "local", v1, None, target.url, False)
    assert first.predictions is not None and np.allclose(first.predictions, _answers(1), rtol=1e-5, atol=1e-6)
    service = _server(target)
    assert service.info == {"model_name": NAME, "model_version": v1.version, "model_uri": v1.uri}
    assert _version(target) == (v1.version, None)

    again = target.roll_out(v1, ROWS)
    assert (again.model, again.previous, again.endpoint, again.reused) == (v1, v1, service.url, True)
    assert again.predictions is not None and np.allclose(again.predictions, _answers(1), rtol=1e-5, atol=1e-6)
    assert target.roll_out(v1, None).predictions is None

    second = target.roll_out(v2, ROWS[:1])
    assert (second.target, second.model, second.previous, second.endpoint, second.reused) == (
        "local", v2, v1, target.url, False)
    assert second.predictions is not None and len(second.predictions) == 1  # the example given, not the model's
    assert np.allclose(second.predictions, _answers(2, ROWS[:1]), rtol=1e-5, atol=1e-6)
    assert _version(target) == (v2.version, v1.version)
    assert _server(target).pid == service.pid  # one server throughout, never restarted
    assert _server(target).info == {"model_name": NAME, "model_version": v2.version, "model_uri": v2.uri}
    assert [r.getMessage() for r in caplog.records if r.name == local.__name__] == [
        f"{NAME} version {v1.version} now serves at {target.url} (was nothing)",
        f"{NAME} version {v1.version} already serves at {target.url}; reusing it",
        f"{NAME} version {v1.version} already serves at {target.url}; reusing it",
        f"{NAME} version {v2.version} now serves at {target.url} (was {v1.version})",
    ]


def test_a_version_that_fails_its_checks_is_dropped_and_the_live_one_serves_on(
        target: LocalTarget, versions: Versions) -> None:
    live = versions.good[1]
    target.roll_out(live, ROWS)  # served now, by this rollout or an earlier one
    service = _server(target)
    three, gone = versions.three_columns, versions.gone
    with pytest.raises(ServingError) as caught:
        target.roll_out(three, ROWS)
    assert str(caught.value) == (
        f"{NAME} version {three.version} was not rolled out: {three.uri} answers with shape [2, 3] where the live "
        f"version answers [2, 10]; clients would break; still serving version {live.version}")
    # It loaded and warmed, then was dropped: the server holds no candidate to promote by mistake later.
    token = {"Authorization": f"Bearer {serving_token(target.settings)}"}
    staged = httpx.post(f"{target.url}/admin/candidate/invocations", json={"inputs": ROWS}, headers=token)
    assert (staged.status_code, staged.json()["message"]) == (404, "no candidate is loaded")

    with pytest.raises(ServingError) as caught:
        target.roll_out(gone, ROWS)
    message, why = str(caught.value), str(caught.value.__cause__)
    assert why.startswith(f"HTTP 422: {gone.uri} failed to load: ") and "\n" not in message
    assert message == f"{NAME} version {gone.version} was not rolled out: {why}; still serving version {live.version}"

    assert _server(target).pid == service.pid and _server(target).info["model_version"] == live.version
    assert _version(target)[0] == live.version
    served = httpx.post(f"{target.url}/invocations", json={"inputs": ROWS}, timeout=10).raise_for_status()
    assert np.allclose(served.json()["predictions"], _answers(2), rtol=1e-5, atol=1e-6)


def test_a_first_rollout_that_fails_stops_the_server_it_started(target: LocalTarget, versions: Versions) -> None:
    target.stop()  # nothing serves, whichever test ran before
    gone = versions.gone
    with pytest.raises(ServingError) as caught:
        target.roll_out(gone, ROWS)
    why = str(caught.value.__cause__)  # the server's answer; nothing served before, so nothing "still serves"
    assert why.startswith(f"HTTP 422: {gone.uri} failed to load: ")
    assert str(caught.value) == f"{NAME} version {gone.version} was not rolled out: {why}"
    assert processes.find(target.settings.home, local.NAME) is None
    assert not processes.answers(f"{target.url}/livez")
    assert target.live() is None
