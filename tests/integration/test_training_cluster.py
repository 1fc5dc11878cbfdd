"""Cluster mode against a real Prefect server: the pipeline launches the train deployment and waits for it.

The train deployment is served by a real runner process (standing in for the Kubernetes worker, which
cannot run here); a deployment nobody serves stands for a training pod that never starts.
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

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.states import Cancelling

from flows.pipeline import pipeline_flow
from flows.train import TRAIN_DEPLOYMENT, run_training, train_flow
from shipyard import datasets
from shipyard.datasets.demo import write_demo_source
from shipyard.errors import TrainingError
from shipyard.params import DatasetRef, TrainParams
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from shipyard.training import TrainResult
from tests import fakekube, servers
from tests.stack import S3

REPO = Path(__file__).resolve().parents[2]
IDLE = "train-flow/nobody-serves-this"


@pytest.fixture
def cluster_mode(s3: S3, prefect_api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Stage the digits and switch training to cluster mode; return the dataset version."""
    monkeypatch.setenv("SHIPYARD_TRAIN_MODE", "cluster")
    staged = datasets.stage(filesystem(load_settings()), "digits", str(write_demo_source(tmp_path / "digits")))
    return staged.version


@pytest.fixture
def served(cluster_mode: str, prefect_api: str, tmp_path: Path) -> Iterator[str]:
    """Serve train_flow as the cluster train deployment from a runner process."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(REPO)}
    log = tmp_path / "runner.log"
    script = f"from flows.train import train_flow; train_flow.serve(name='{TRAIN_DEPLOYMENT.split('/')[1]}')"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_deployment(TRAIN_DEPLOYMENT, proc, log)
        yield cluster_mode
    finally:
        servers.stop(proc)


def _wait_for_deployment(name: str, proc: Any, log: Path) -> None:
    with get_client(sync_client=True) as client:
        for _ in range(300):
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:  # noqa: BLE001 - not there yet
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
    pytest.fail(f"runner never created {name}: {log.read_text()[-2000:]}")


@pytest.fixture
def idle(cluster_mode: str) -> str:
    """A train deployment that no worker serves: its runs stay Scheduled, like a Job that never starts."""
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("train-flow")
        client.create_deployment(flow_id=flow_id, name=IDLE.split("/")[1])
    return cluster_mode


@flow
def launch_only(version: str, training: TrainParams, deployment: str = TRAIN_DEPLOYMENT) -> TrainResult:
    """The pipeline's train line alone."""
    return run_training(DatasetRef(name="digits", version=version), training, deployment)


def _child_of(deployment: str) -> FlowRun:
    """Return the run of ``deployment`` that is still waiting (earlier tests' runs have ended)."""
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        for _ in range(200):
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
            waiting = [r for r in runs if r.state is not None and not r.state.is_final()]
            if waiting:
                return waiting[0]
            time.sleep(0.1)
    pytest.fail(f"no run of {deployment} was created")


def _in_thread(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_cluster_mode_trains_through_the_deployment_then_a_failed_child_fails_the_pipeline(served: str) -> None:
    result = launch_only(served, TrainParams(epochs=2))
    assert [h.epoch for h in result.history] == [1, 2] and result.metrics["val_accuracy"] > 0.8
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[client.read_deployment_by_name(TRAIN_DEPLOYMENT).id])))
    assert [(r.state_name, r.parameters["dataset"]["version"]) for r in runs] == [("Completed", served)]

    with pytest.raises(TrainingError) as caught:
        pipeline_flow(training=TrainParams(epochs=2, batch_size=5000))
    message = str(caught.value)
    assert f"of {TRAIN_DEPLOYMENT} ended Failed" in message
    assert "batch_size 5000 is larger than the training split (1438 rows)" in message


def test_cancelling_the_pipeline_cancels_the_training_run(idle: str) -> None:
    thread, errors = _in_thread(lambda: launch_only(idle, TrainParams(epochs=1), IDLE))
    child = _child_of(IDLE)
    with get_client(sync_client=True) as client:
        parent_id = client.read_task_run(child.parent_task_run_id).flow_run_id if child.parent_task_run_id else None
        assert parent_id is not None
        client.set_flow_run_state(parent_id, Cancelling(message="cancelled from the UI"), force=True)
        thread.join(timeout=60)
        assert not thread.is_alive()
        state = client.read_flow_run(child.id).state
    assert state is not None and state.is_cancelled(), state
    assert errors and "pipeline run was cancelled" in str(errors[0])


def test_a_training_pod_that_cannot_be_scheduled_fails_the_pipeline_with_the_schedulers_reason(
        idle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: not eligible."
    with fakekube.serve() as kube:
        config = tmp_path / "kubeconfig"
        config.write_text(yaml.safe_dump(kube.kubeconfig("shipyard")))
        monkeypatch.setenv("KUBECONFIG", str(config))
        thread, errors = _in_thread(lambda: launch_only(idle, TrainParams(epochs=1), IDLE))
        child = _child_of(IDLE)
        # What the Kubernetes worker and the scheduler would have made of the run.
        kube.put("jobs", {"metadata": {"name": "train-abc", "namespace": "shipyard",
                                       "labels": {"prefect.io/flow-run-id": str(child.id)},
                                       "annotations": {"shipyard.dev/unschedulable-timeout": "1s"}}})
        kube.put("pods", {"metadata": {"name": "train-abc-x1", "namespace": "shipyard",
                                       "labels": {"job-name": "train-abc"}},
                          "status": {"phase": "Pending", "conditions": [
                              {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                               "message": reason}]}})
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert kube.get("jobs", "shipyard", "train-abc") is None
    assert errors and isinstance(errors[0], TrainingError)
    assert "training job shipyard/train-abc stayed unschedulable" in str(errors[0]) and reason in str(errors[0])
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(child.id).state
    assert state is not None and state.is_failed() and reason in (state.message or "")


def test_the_prefect_server_rejects_a_mistyped_job_variable_for_the_gpu_train_pool(prefect_api: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError

    from deployments.job_template import load

    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(WorkPoolCreate(name="gpu-train-test", type="kubernetes",
                                                      base_job_template=load("gpu-train")))
        flow_id = client.create_flow_from_name("train-flow")
        client.create_deployment(flow_id=flow_id, name="typo-ok", work_pool_name=pool.name,
                                 job_variables={"gpu_count": 2})
        with pytest.raises(PrefectHTTPStatusError) as caught:
            client.create_deployment(flow_id=flow_id, name="typo", work_pool_name=pool.name,
                                     job_variables={"gpu_cuont": 2})
    assert caught.value.response.status_code == 422
    assert "'gpu_cuont' was unexpected" in caught.value.response.text


def test_the_train_deployment_is_in_the_deployment_table() -> None:
    from deployments import DEPLOYMENTS

    assert TRAIN_DEPLOYMENT in {d.full_name for d in DEPLOYMENTS}
    assert any(d.full_name == TRAIN_DEPLOYMENT and d.pool_setting == "train_work_pool" for d in DEPLOYMENTS)
    assert train_flow.name == "train-flow"

