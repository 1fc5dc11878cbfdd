"""Guarantee 1, registry half: MLflow killed while registering, and MLflow's artifacts on a faulty S3.

A real MLflow server process on SQLite, its artifacts in the S3 server (as in tests/stack.py),
but one of the test's own: it can be SIGKILLed and started again on the same port and database, and its
S3 traffic can go through the fault proxy (tests/faultproxy.py). Artifacts are proxied by the server
(``mlflow-artifacts:``), so the server's S3 client meets the faults on upload and on every model load.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from prefect import flow

from shipyard import datasets, registry
from shipyard.datasets.demo import write_demo_source
from shipyard.errors import RegistryError, ServingError
from shipyard.params import RegisterParams, TrainParams
from shipyard.refs import DatasetRef
from shipyard.rollout.base import ModelRef
from shipyard.rollout.local import LocalTarget
from shipyard.serving.model import load as load_served
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from shipyard.training import TrainResult, load_model, load_recipe, train
from tasks.register import register_model
from tests import servers
from tests.faultproxy import FAULTS, Event, FaultProxy
from tests.stack import AWS_ENV, MLFLOW_BUCKET, S3


@dataclass
class MlflowServer:
    """An MLflow server process that can be killed and started again (same port, database, artifact root)."""

    directory: Path
    env: dict[str, str]
    port: int = field(default_factory=servers.free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = servers.mlflow_command(self.port, self.directory / "mlflow.db", f"s3://{MLFLOW_BUCKET}/artifacts")
        self.proc = servers.start(command, f"{self.url}/health", self.directory / f"server-{self.starts}.log",
                                  env=self.env, timeout=180)
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers, no clean-up
        self.proc.wait()


@pytest.fixture
def mlflow_process(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    env = {**AWS_ENV, "AWS_ENDPOINT_URL_S3": s3.endpoint, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = MlflowServer(tmp_path / "mlflow", env)
    server.start()
    monkeypatch.setenv("SHIPYARD_MLFLOW_EXPERIMENT", "kills")
    yield server
    if server.proc is not None and server.proc.poll() is None:
        servers.stop(server.proc)


@pytest.fixture
def faulty_mlflow(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MlflowServer, FaultProxy]]:
    """An MLflow server whose S3 requests (artifact uploads and downloads) all go through the fault proxy."""
    with FaultProxy(s3.endpoint) as proxy:
        env = {**AWS_ENV, "AWS_ENDPOINT_URL_S3": proxy.url, "MLFLOW_S3_ENDPOINT_URL": proxy.url,
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        server = MlflowServer(tmp_path / "mlflow", env)
        server.start()
        monkeypatch.setenv("SHIPYARD_MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("SHIPYARD_MLFLOW_EXPERIMENT", "faults")
        monkeypatch.setenv("SHIPYARD_INFERENCE_PORT", str(servers.free_port()))
        try:
            yield server, proxy
        finally:
            LocalTarget(load_settings()).stop()
            assert server.proc is not None
            servers.stop(server.proc)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_demo_source(tmp_path / "digits")


@pytest.fixture
def trained(s3: S3, source: Path) -> TrainResult:
    staged = datasets.stage(filesystem(load_settings()), "digits", str(source))
    ref = DatasetRef(name="digits", version=staged.version)
    return train(filesystem(load_settings()), ref, TrainParams(epochs=1, hidden_units=8), source)


@flow
def register_flow(result: TrainResult, params: RegisterParams) -> registry.Registration:
    """The pipeline's register step alone (its task retries are the ones under test)."""
    return register_model(result, params)


def _versions(url: str, model_name: str) -> list[str]:
    client = MlflowClient(url, registry_uri=url)
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{model_name}'"))


@pytest.mark.drill
def test_mlflow_killed_while_registering_and_restarted_ends_with_exactly_one_version(
        mlflow_process: MlflowServer, trained: TrainResult, prefect_api: str, model_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    killed = threading.Event()

    def kill(event: Event) -> None:  # in the proxy's thread, before the client hears anything
        mlflow_process.kill()
        killed.set()

    def restart() -> None:
        if killed.wait(600):
            mlflow_process.start()

    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    with FaultProxy(mlflow_process.url) as proxy:
        # The server creates the version and is killed before it can answer: the client never learns it exists.
        proxy.inject("drop-answer", "POST", "/model-versions/create")
        proxy.on_fault = kill
        monkeypatch.setenv("SHIPYARD_MLFLOW_TRACKING_URI", proxy.url)
        registration = register_flow(trained, RegisterParams(model_name=model_name))
        down = len(proxy.seen("upstream-down"))
    restarter.join(timeout=600)
    print(f"\nMLflow server started {mlflow_process.starts} times; {down} requests met it down; "
          f"versions {_versions(mlflow_process.url, model_name)}")
    assert killed.is_set() and mlflow_process.starts == 2
    assert _versions(mlflow_process.url, model_name) == [registration.version]
    assert registration.is_champion
    client = MlflowClient(mlflow_process.url, registry_uri=mlflow_process.url)
    assert client.get_model_version_by_alias(model_name, "champion").version == registration.version


def _register(result: TrainResult, model_name: str) -> registry.Registered:
    settings = load_settings()
    return registry.register(registry.client(settings), settings, filesystem(settings), result, model_name,
                             "val_accuracy", registry.RunContext())


def _model_files(s3: S3, url: str, model_name: str, version: str) -> dict[str, str]:
    """SHA-256 of every file of the version's model as stored in S3, read directly (not through the faults)."""
    source = str(MlflowClient(url, registry_uri=url).get_model_version(model_name, version).source)  # models:/m-<id>
    model_id = source.rsplit("/", 1)[-1]
    keys = [k for k in _bucket_keys(s3) if f"/{model_id}/artifacts/" in k]
    return {k.split(f"/{model_id}/artifacts/", 1)[1]: hashlib.sha256(
        s3.client.get_object(Bucket=MLFLOW_BUCKET, Key=k)["Body"].read()).hexdigest() for k in keys}


def _bucket_keys(s3: S3) -> list[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=MLFLOW_BUCKET)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _expected(result: TrainResult, rows: np.ndarray) -> np.ndarray:
    """What the trained weights predict, computed here from the store (no MLflow involved)."""
    recipe = load_recipe(result.params.entrypoint, result.params)
    module = recipe.serving_model(load_model(filesystem(load_settings()), result))
    with torch.inference_mode():
        out: np.ndarray = module(torch.from_numpy(rows)).numpy()
    return out


@pytest.mark.drill
def test_at_a_10_percent_s3_fault_rate_model_artifacts_and_served_predictions_are_exact(
        faulty_mlflow: tuple[MlflowServer, FaultProxy], trained: TrainResult, s3: S3, model_name: str,
        tmp_path: Path) -> None:
    server, proxy = faulty_mlflow
    proxy.randomly(0.10, seed=13)
    registered = _register(trained, model_name)
    # Loaded through the faults: the files MLflow hands back are the files in S3, byte for byte.
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(registered.model_uri, dst_path=str(tmp_path / "download")))
    downloaded = {str(p.relative_to(local)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in local.rglob("*") if p.is_file() and p.name != "registered_model_meta"}  # written locally
    stored = _model_files(s3, server.url, model_name, registered.version)
    assert downloaded == stored and "MLmodel" in stored
    # Served through the faults: the server loads the version and answers what the trained weights predict.
    rows = np.asarray(registered.input_example, dtype=np.float32)
    served = load_served(registered.model_uri, model_name, registered.version)
    rolled = LocalTarget(load_settings()).roll_out(ModelRef(model_name=model_name, version=registered.version),
                                                   registered.input_example)
    faults, requests = proxy.injected, len(proxy.events)
    hit = sorted(f"{e.method} {e.outcome} attempt {e.attempt}" for e in proxy.events if e.outcome in FAULTS)
    print(f"\n{faults} faults injected in {requests} S3 requests of the MLflow server ({hit}); {len(stored)} files")
    assert faults >= 3
    np.testing.assert_allclose(np.asarray(rolled.predictions), _expected(trained, rows), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(served.pyfunc.predict(rows), _expected(trained, rows), rtol=1e-6, atol=1e-7)
    assert _versions(server.url, model_name) == [registered.version]


@pytest.mark.drill
def test_at_a_100_percent_s3_fault_rate_nothing_is_registered_and_the_live_version_keeps_serving(
        faulty_mlflow: tuple[MlflowServer, FaultProxy], trained: TrainResult, source: Path, s3: S3,
        model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    server, proxy = faulty_mlflow
    # MLflow's clients (here and in the inference server started below) retry a 500 for minutes (7 tries,
    # backoff doubling from 2 s); the defaults stay as they are outside this test.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    first = _register(trained, model_name)  # healthy: version 1 is served
    target = LocalTarget(load_settings())
    target.roll_out(ModelRef(model_name=model_name, version=first.version), first.input_example)
    second = _register(train(filesystem(load_settings()), trained.dataset,
                             TrainParams(epochs=1, hidden_units=12), source), model_name)
    before = _bucket_keys(s3)

    proxy.randomly(1.0, faults=("503-slowdown", "500", "reset"), seed=13)
    third = train(filesystem(load_settings()), trained.dataset, TrainParams(epochs=1, hidden_units=10),
                  source)
    with pytest.raises(RegistryError) as caught:
        _register(third, model_name)
    message = str(caught.value)
    with pytest.raises(ServingError) as refused:
        target.roll_out(ModelRef(model_name=model_name, version=second.version), second.input_example)
    print(f"\nregister: {message}\nroll out: {refused.value}")
    assert "\n" not in message and server.url in message and "SHIPYARD_MLFLOW_TRACKING_URI" in message
    assert "\n" not in str(refused.value) and f"still serving version {first.version}" in str(refused.value)
    assert _versions(server.url, model_name) == sorted([first.version, second.version])  # no third version
    live = target.live()
    assert live is not None and live.model.version == first.version
    answer = httpx.post(f"{live.endpoint}/invocations", json={"inputs": first.input_example}, timeout=30)
    assert answer.status_code == 200
    assert _bucket_keys(s3) == before  # every S3 request failed: nothing half-uploaded either
