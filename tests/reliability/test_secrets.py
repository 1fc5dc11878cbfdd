"""Planted credentials leave no trace: a real ``shipyard run`` whose every secret is distinctive, then a sweep.

Planted: AWS keys and a session token in the environment (moto accepts any), a token in the MLflow tracking
URI's user-info (``http://shipyard:<token>@127.0.0.1:port``: MLflow's client sends it as basic auth, the test
server ignores it) and the inference server's swap token (``SHIPYARD_SERVING_TOKEN``). The store cannot carry
a password of its own: ``s3://`` URIs have no user-info (Shipyard refuses one, see the last test) and botocore
rejects one in ``AWS_ENDPOINT_URL_S3``, so the store's secrets are the AWS keys, where a user puts them.

Swept, for each secret as written, in base64, URL-quoted and (for the URI's token) as the basic-auth header value:
the CLI's stdout and stderr; every file under the home (logs, service records, caches); every process's command
line while the run ran (``/proc/*/cmdline``; environments are where secrets belong and are not swept); every
Prefect flow run's parameters, name and state, task run, log line and artifact; every MLflow run's params, tags,
metric names and artifact files, every model version's tags, description and source; every object in both
buckets; and the Kubernetes manifests and Prefect deployment file rendered with the same settings.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote
from uuid import UUID

import pytest
from mlflow import MlflowClient

from shipyard.errors import ConfigError
from tests import servers
from tests.stack import MLFLOW_BUCKET, STORE_BUCKET, _reset_buckets, s3_client

MODEL = "secrets-model"
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTED7Q2XK4ZJ",
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-9f3b1c7e2d",
    "AWS_SESSION_TOKEN": "planted-session-token-4a8e6b0d1f",
    "mlflow URI token": "tok3n-PLANTED-5c9d2e7a",
    "SHIPYARD_SERVING_TOKEN": "planted-swap-token-8b1f4c6e3a",
}
MLFLOW_USER = "shipyard"


def forms(secret: str) -> list[str]:
    """Return the ways a secret can show up: as written, base64, URL-quoted, inside a basic-auth header."""
    b64 = [base64.b64encode(s.encode()).decode().rstrip("=") for s in (secret, f"{MLFLOW_USER}:{secret}")]
    return list(dict.fromkeys([secret, quote(secret, safe=""), *b64]))


@dataclass
class Sweep:
    """Each place swept, how many things it held, and any trace found there."""

    places: dict[str, int] = field(default_factory=dict)
    traces: list[str] = field(default_factory=list)

    def scan(self, place: str, text: str | bytes, what: str = "") -> None:
        """Look for every form of every secret in ``text``."""
        data = text if isinstance(text, bytes) else text.encode(errors="replace")
        self.places[place] = self.places.get(place, 0) + 1
        for name, secret in SECRETS.items():
            for form in forms(secret):
                if form.encode() in data:
                    self.traces.append(f"{name} in {place} {what}: ...{_around(data, form.encode())}...")


def _around(data: bytes, needle: bytes) -> str:
    at = data.find(needle)
    return data[max(0, at - 80): at + len(needle) + 40].decode(errors="replace")


@dataclass(frozen=True)
class Run:
    """The finished run: its environment, output, home and every command line seen while it ran."""

    env: dict[str, str]
    home: Path
    stdout: str
    stderr: str
    returncode: int
    cmdlines: dict[int, bytes]
    mlflow: str
    s3_endpoint: str
    experiment: str


def _watch_cmdlines(seen: dict[int, bytes], stop: threading.Event) -> None:
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    seen.setdefault(int(entry.name), (entry / "cmdline").read_bytes())
                except OSError:
                    pass  # the process ended between listing and reading
        stop.wait(0.1)


@pytest.fixture(scope="module")
def run(s3_endpoint: str, mlflow_server: str, prefect_api: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Run]:
    """Run ``shipyard run`` once (one epoch) as a user would, with every secret planted."""
    _reset_buckets(s3_endpoint)
    home = tmp_path_factory.mktemp("secrets-home")
    host = mlflow_server.removeprefix("http://")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "AWS_", "MLFLOW_", "PREFECT_"))}
    env.update({
        "AWS_ACCESS_KEY_ID": SECRETS["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
        "AWS_SESSION_TOKEN": SECRETS["AWS_SESSION_TOKEN"], "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_endpoint, "SHIPYARD_STORE_URI": f"s3://{STORE_BUCKET}/store",
        "SHIPYARD_MLFLOW_TRACKING_URI": f"http://{MLFLOW_USER}:{SECRETS['mlflow URI token']}@{host}",
        "SHIPYARD_MLFLOW_EXPERIMENT": "secrets", "SHIPYARD_HOME": str(home),
        "SHIPYARD_SERVING_TOKEN": SECRETS["SHIPYARD_SERVING_TOKEN"], "SHIPYARD_PREFECT_API_URL": prefect_api,
        "SHIPYARD_INFERENCE_PORT": str(servers.free_port()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })
    seen: dict[int, bytes] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_cmdlines, args=(seen, stop), daemon=True)
    watcher.start()
    cli = [str(Path(sys.executable).with_name("shipyard")), "run", "--epochs", "1", "--hidden-units", "16",
           "--model-name", MODEL]
    try:
        done = subprocess.run(cli, env=env, cwd=home, capture_output=True, text=True, timeout=600, check=False)
    finally:
        stop.set()
        watcher.join()
    yield Run(env=env, home=home, stdout=done.stdout, stderr=done.stderr, returncode=done.returncode,
              cmdlines=seen, mlflow=mlflow_server, s3_endpoint=s3_endpoint, experiment="secrets")
    subprocess.run([cli[0], "down"], env=env, cwd=home, capture_output=True, timeout=120, check=False)


def _sweep_prefect(sweep: Sweep, run: Run) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    # This run's own records (the session's Prefect server holds other tests' runs too): the pipeline run the
    # CLI printed, and the subflow runs under it.
    found = re.search(r"Prefect run: ([0-9a-f-]{36})", run.stdout)
    assert found is not None, run.stdout[-2000:]
    pipeline = UUID(found.group(1))
    with get_client(sync_client=True) as client:
        flow_runs = [client.read_flow_run(pipeline), *client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline])))]
        assert len(flow_runs) >= 2  # the pipeline and its train subflow
        ids = [r.id for r in flow_runs]
        for flow_run in flow_runs:
            sweep.scan("prefect flow runs", flow_run.model_dump_json(), flow_run.name)
        for task_run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200):
            sweep.scan("prefect task runs", task_run.model_dump_json(), task_run.name)
        for artifact in client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
                any_=ids)), limit=200):
            sweep.scan("prefect artifacts", artifact.model_dump_json(), str(artifact.key))

        offset = 0
        while True:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=offset)
            for line in logs:
                sweep.scan("prefect logs", line.message)
            if len(logs) < 200:
                break
            offset += 200
        for deployment in client.read_deployments():
            sweep.scan("prefect deployments", deployment.model_dump_json(), deployment.name)


def _sweep_mlflow(sweep: Sweep, run: Run, tmp: Path) -> None:
    import mlflow

    client = MlflowClient(run.mlflow, registry_uri=run.mlflow)
    experiment = client.get_experiment_by_name(run.experiment)
    assert experiment is not None
    sweep.scan("mlflow experiments", repr(experiment))
    runs = client.search_runs([experiment.experiment_id])
    assert runs, "the run logged nothing to MLflow"
    mlflow.set_tracking_uri(run.mlflow)
    for found in runs:
        data = found.data
        sweep.scan("mlflow params", repr(sorted(data.params.items())), found.info.run_id)
        sweep.scan("mlflow tags", repr(sorted(data.tags.items())), found.info.run_id)
        sweep.scan("mlflow metric names", repr(sorted(data.metrics)), found.info.run_id)
        sweep.scan("mlflow run info", repr(found.info), found.info.run_id)
        target = tmp / found.info.run_id
        mlflow.artifacts.download_artifacts(run_id=found.info.run_id, dst_path=str(target))
        for path in (p for p in target.rglob("*") if p.is_file()):
            sweep.scan("mlflow artifacts", path.read_bytes(), str(path.relative_to(target)))
    for model in client.search_registered_models():
        sweep.scan("mlflow registered models", repr(model))
        for version in client.search_model_versions(f"name = '{model.name}'"):
            sweep.scan("mlflow model versions", repr(version), f"{model.name}/{version.version}")


def _sweep_store(sweep: Sweep, run: Run) -> None:
    client = s3_client(run.s3_endpoint)
    for bucket in (STORE_BUCKET, MLFLOW_BUCKET):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                sweep.scan(f"objects in s3://{bucket}", body, obj["Key"])


def _sweep_manifests(sweep: Sweep, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Render what Shipyard would send to Kubernetes and Prefect with the run's settings."""
    from deployments.apply import cluster_env
    from deployments.prefect_yaml import render
    from shipyard.kube import indexed, inference
    from shipyard.settings import load_settings
    from shipyard.training.multinode import pod_env

    for name, value in run.env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    for build in (lambda: inference.deployment(settings, MODEL, "1"), lambda: cluster_env(settings),
                  lambda: render(settings)):
        try:
            sweep.scan("rendered manifests", repr(build()))
        except ConfigError as exc:  # refused because a value carries credentials: the refusal must not echo it
            sweep.scan("rendered manifests", str(exc), "(refusal)")
    for manifest in (inference.service(settings), inference.disruption_budget(settings)):
        sweep.scan("rendered manifests", repr(manifest))
    plan = indexed.JobPlan(name="train-x-1", namespace=settings.kube_namespace, image=settings.image, run_id="r",
                           dataset="digits", version="0" * 16, params_json="{}", nodes=2, procs_per_node=1,
                           env=pod_env(settings))
    sweep.scan("rendered manifests", repr(indexed.job_manifest(plan)))
    sweep.scan("rendered manifests", repr(indexed.service_manifest(plan, "uid")))


def test_planted_credentials_leave_no_trace_anywhere(run: Run, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Endpoint:" in run.stdout  # the run went all the way: staged, trained, registered, served
    sweep = Sweep()
    sweep.scan("cli stdout", run.stdout)
    sweep.scan("cli stderr", run.stderr)
    files = [p for p in run.home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files), files
    for path in files:
        sweep.scan("files under the home", path.read_bytes(), str(path.relative_to(run.home)))
    # The test's own process (and its parent) hold the secrets in their environment, never on a command line.
    assert len(run.cmdlines) > 3 and any(b"shipyard.serving" in c for c in run.cmdlines.values())
    for pid, cmdline in run.cmdlines.items():
        sweep.scan("process command lines", cmdline, f"pid {pid}: {cmdline[:120]!r}")
    _sweep_prefect(sweep, run)
    _sweep_mlflow(sweep, run, tmp_path)
    _sweep_store(sweep, run)
    _sweep_manifests(sweep, run, monkeypatch)
    print(f"secrets planted: {len(SECRETS)}; places swept: {len(sweep.places)}; items: {sum(sweep.places.values())}"
          f"; traces: {len(sweep.traces)}")
    print(sweep.places)
    required = {"cli stdout", "files under the home", "process command lines", "prefect flow runs", "prefect task runs",
                "prefect artifacts", "prefect logs", "mlflow params", "mlflow tags", "mlflow artifacts",
                "mlflow model versions", f"objects in s3://{STORE_BUCKET}", f"objects in s3://{MLFLOW_BUCKET}",
                "rendered manifests"}
    assert required <= set(sweep.places), required - set(sweep.places)  # no place swept empty-handed
    assert sweep.traces == [], "\n".join(sweep.traces)


def test_a_store_uri_with_a_password_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from shipyard.cli import main

    secret = "planted-store-password-2e7c"
    monkeypatch.setenv("SHIPYARD_STORE_URI", f"s3://admin:{secret}@ml-data/store")
    assert main(["data", "ls"]) == 1
    err = capsys.readouterr().err
    assert "SHIPYARD_STORE_URI" in err and len(err.strip().splitlines()) == 1, err
    assert not any(form in err for form in forms(secret)), err
