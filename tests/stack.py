"""The real servers integration and reliability tests share: an S3-compatible server, MLflow, Prefect.

Registered once, by ``tests/conftest.py``, so that each session fixture has one definition and each server
starts once per session (per pytest-xdist worker). A second registration (a conftest importing these) would be a
second fixture of the same name: a second Prefect test server, whose settings then replace the first's in the
process while tests still hand the first one's URL to the CLI.

Session fixtures start each server once; the ``s3`` fixture resets the S3 server between tests and
points Shipyard's settings at it. The S3 server is moto unless the test module is listed in
``BOTH_BACKENDS``: those tests run twice, against moto and against SeaweedFS (a real S3 implementation;
deselect it with ``-m "not seaweedfs"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import pytest

from tests import seaweedfs, servers

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
STORE_BUCKET = "shipyard-test"
MLFLOW_BUCKET = "mlflow-test"

# Test modules (name prefixes) whose ``s3`` runs against both backends.
BOTH_BACKENDS = ("test_staging", "test_pipeline_e2e")
BACKENDS = [pytest.param("moto", id="moto"), pytest.param("seaweedfs", id="seaweedfs", marks=pytest.mark.seaweedfs)]


@dataclass(frozen=True)
class S3:
    """The S3-compatible server a test talks to."""

    endpoint: str
    bucket: str
    client: Any
    backend: str = "moto"

    def keys(self, prefix: str = "") -> list[str]:
        """List every key in the store bucket under ``prefix``."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start moto's S3-compatible server over HTTP on 127.0.0.1 for the whole session."""
    port = servers.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = servers.start(servers.moto_command(port), f"{endpoint}/moto-api/", log)
    yield endpoint
    servers.stop(proc)


@pytest.fixture(scope="session")
def seaweedfs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start SeaweedFS (``weed mini``, every port explicit, telemetry off) on 127.0.0.1 for the session."""
    proc, endpoint = seaweedfs.start(tmp_path_factory.mktemp("seaweedfs"))
    yield endpoint
    servers.stop(proc)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the modules in BOTH_BACKENDS against moto and SeaweedFS."""
    if "s3" in metafunc.fixturenames and metafunc.module.__name__.rsplit(".", 1)[-1].startswith(BOTH_BACKENDS):
        metafunc.parametrize("s3_backend", BACKENDS, indirect=True)


@pytest.fixture
def s3_backend(request: pytest.FixtureRequest) -> str:
    """Name the S3 server behind ``s3``: 'moto' unless the test is parametrized."""
    return str(getattr(request, "param", "moto"))


def s3_client(endpoint: str) -> Any:
    """Return a boto3 client for a test S3 server."""
    keys = {k.lower(): v for k, v in AWS_ENV.items() if k != "AWS_DEFAULT_REGION"}
    return boto3.client("s3", endpoint_url=endpoint, region_name=AWS_ENV["AWS_DEFAULT_REGION"], **keys)


def _reset_buckets(endpoint: str, backend: str = "moto") -> Any:
    client = s3_client(endpoint)
    if backend == "moto":
        httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    else:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in existing & {STORE_BUCKET, MLFLOW_BUCKET}:
            client.delete_bucket(Bucket=bucket)  # weed mini allows deleting a non-empty bucket
    for bucket in (STORE_BUCKET, MLFLOW_BUCKET):
        client.create_bucket(Bucket=bucket)
    return client


@pytest.fixture
def s3(s3_backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> S3:
    """Reset the S3 server, create the buckets, and point SHIPYARD_STORE_URI at it."""
    endpoint = str(request.getfixturevalue("s3_endpoint" if s3_backend == "moto" else "seaweedfs_endpoint"))
    client = _reset_buckets(endpoint, s3_backend)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("SHIPYARD_STORE_URI", f"s3://{STORE_BUCKET}/store")
    return S3(endpoint=endpoint, bucket=STORE_BUCKET, client=client, backend=s3_backend)


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start an MLflow tracking server process on SQLite with its artifacts in the S3 server."""
    directory = tmp_path_factory.mktemp("mlflow")
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**AWS_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    _reset_buckets(s3_endpoint)
    proc = servers.start(servers.mlflow_command(port, directory / "mlflow.db", f"s3://{MLFLOW_BUCKET}/artifacts"),
                         f"{url}/health", directory / "server.log", env=env, timeout=120)
    yield url
    servers.stop(proc)


@pytest.fixture
def mlflow_uri(mlflow_server: str, s3: S3, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """Point Shipyard at the MLflow server, with an experiment of this test's own."""
    monkeypatch.setenv("SHIPYARD_MLFLOW_TRACKING_URI", mlflow_server)
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    monkeypatch.setenv("SHIPYARD_MLFLOW_EXPERIMENT", f"test-{digest}")
    return mlflow_server


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """Run flows against one Prefect test server for the whole session (it takes 10-15 s to start)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def inference_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Give the local inference server a free port, and stop it after the test."""
    from shipyard.rollout.local import stop
    from shipyard.settings import load_settings

    port = servers.free_port()
    monkeypatch.setenv("SHIPYARD_INFERENCE_PORT", str(port))
    yield port
    stop(load_settings())


def unique_name(request: pytest.FixtureRequest, prefix: str = "m") -> str:
    """Return a registry-safe name unique to this test."""
    return f"{prefix}-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]}"


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name no other test uses (the MLflow server lives for the session)."""
    return unique_name(request)
