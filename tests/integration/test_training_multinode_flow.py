"""The train flow with nodes > 1 against a real Prefect server and a fake Kubernetes API over HTTP.

The pipeline's train line creates the Indexed Job itself (no gpu-train pod in between), publishes node count and
per-rank throughput, and cancelling the flow run (served by a real runner process, which SIGTERMs it as the
Kubernetes worker would) deletes the Job and its Service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from flows.train import run_training
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import Settings
from shipyard.storage import filesystem
from shipyard.training import TrainResult, training_key
from shipyard.training.codehash import recipe_code
from shipyard.training.multinode import job_name
from tasks.train import summary
from tests import fakekube, servers

REPO = Path(__file__).resolve().parents[2]
NS = "shipyard"
DEPLOYMENT = "train-flow/multinode-test"


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[fakekube.FakeKube]:
    with fakekube.serve() as fake:
        config = tmp_path / "kubeconfig"
        config.write_text(yaml.safe_dump(fake.kubeconfig(NS)))
        for name, value in {"KUBECONFIG": str(config), "SHIPYARD_STORE_URI": str(tmp_path / "store"),
                            "SHIPYARD_KUBE_NAMESPACE": NS, "SHIPYARD_TRAIN_MODE": "cluster",
                            "PYTHONPATH": str(REPO)}.items():
            monkeypatch.setenv(name, value)
        yield fake


def _wait_for(kube: fakekube.FakeKube, plural: str, name: str, present: bool = True, tries: int = 1200) -> None:
    for _ in range(tries):
        if (kube.get(plural, NS, name) is not None) == present:
            return
        time.sleep(0.05)
    pytest.fail(f"{plural}/{name} {'never appeared' if present else 'was never deleted'}")


REF = DatasetRef(name="digits", version="0123456789abcdef")


def _result(params: TrainParams) -> TrainResult:
    return TrainResult(key=training_key(REF, params), dataset=REF, params=params, code=recipe_code(params.entrypoint),
                       device="cuda", gpu="NVIDIA H100 80GB HBM3", world_size=4, history=[],
                       metrics={"val_accuracy": 0.97}, samples_per_second=4000.0, resumed_from_step=None,
                       model_url="s3://x/model.pt", nodes=2, rank_samples_per_second=[1010.0, 990.0, 1000.0, 1000.0])


@flow
def train_line(params: TrainParams) -> TrainResult:
    """The pipeline's train line alone."""
    return run_training(REF, params, deployment="train-flow/nobody-serves-this")


def test_several_nodes_train_through_an_indexed_job_and_publish_nodes_and_per_rank_throughput(
        prefect_api: str, kube: fakekube.FakeKube, tmp_path: Path) -> None:
    params = TrainParams(epochs=1, nodes=2, procs_per_node=2)
    name = job_name(training_key(REF, params), 1)
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(train_line(params)), daemon=True)
    thread.start()
    _wait_for(kube, "services", name)
    job = kube.get("jobs", NS, name)
    assert job is not None and job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SHIPYARD_STORE_URI"] == str(tmp_path / "store")
    # Shipyard's run label, not Prefect's (whose observer would crash the flow when an attempt's Job is deleted).
    assert "prefect.io/flow-run-id" not in job["metadata"]["labels"]
    run_id = job["metadata"]["labels"]["shipyard.dev/flow-run-id"]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run_id).name  # labelled with the train flow run that launched it
    store = filesystem(Settings(store_uri=str(tmp_path / "store")))
    store.write_bytes(_result(params).model_dump_json().encode(), "training", _result(params).key, "result.json")
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube.put("jobs", job)
    thread.join(timeout=60)
    assert done and done[0].nodes == 2
    with get_client(sync_client=True) as client:
        # Only this test's train-flow run: other tests publish training-curves artifacts on the same server.
        curves = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["training-curves"]), flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)])))
    assert len(curves) == 1
    text = str(curves[0].data)
    assert "on NVIDIA H100 80GB HBM3 (2 nodes, world size 4)" in text
    assert "4,000 samples/s; per rank: 0: 1,010, 1: 990, 2: 1,000, 3: 1,000" in text


def test_summary_of_a_single_process_run_has_no_per_rank_list() -> None:
    result = _result(TrainParams()).model_copy(update={"nodes": 1, "world_size": 1, "gpu": None, "device": "cpu",
                                                        "rank_samples_per_second": [4000.0]})
    assert summary(result).endswith("on cpu (1 node, world size 1)\n\n4,000 samples/s")


@pytest.fixture
def served(prefect_api: str, kube: fakekube.FakeKube, tmp_path: Path) -> Iterator[str]:
    """Serve train_flow from a runner process that sees the fake cluster."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    log = tmp_path / "runner.log"
    script = f"from flows.train import train_flow; train_flow.serve(name='{DEPLOYMENT.split('/')[1]}')"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            for _ in range(600):
                try:
                    client.read_deployment_by_name(DEPLOYMENT)
                    break
                except Exception:  # noqa: BLE001 - not there yet
                    assert proc.poll() is None, log.read_text()[-2000:]
                    time.sleep(0.2)
        yield str(log)
    finally:
        servers.stop(proc)


def test_cancelling_the_flow_run_deletes_the_job_and_its_service(served: str, kube: fakekube.FakeKube) -> None:
    params = TrainParams(epochs=1, nodes=2, seed=3)
    name = job_name(training_key(REF, params), 1)
    run: Any = run_deployment(DEPLOYMENT, timeout=0, parameters={
        "dataset": REF.model_dump(), "training": params.model_dump(mode="json")})
    _wait_for(kube, "services", name)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelling(message="cancelled from the UI"), force=True)
        _wait_for(kube, "jobs", name, present=False)
        assert kube.get("services", NS, name) is None
        for _ in range(600):
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                break
            time.sleep(0.1)
    assert state is not None and state.is_cancelled(), (state, Path(served).read_text()[-3000:])
    assert ("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}") in kube.requests
