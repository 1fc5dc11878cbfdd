"""Event-driven retraining: `shipyard data stage` announces a new version and the new-data deployment's
trigger runs the pipeline on exactly that version (real Prefect server, worker, S3 API and MLflow)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound

from deployments.apply import deploy_local
from shipyard.datasets.demo import write_demo_source
from shipyard.settings import load_settings
from tests.stack import S3

SHIPYARD = str(Path(sys.executable).with_name("shipyard"))
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "events-test-local"


@pytest.fixture
def worker(prefect_api: str, tmp_path: Path) -> Iterator[None]:
    """A process worker on the test pool, as 'shipyard up' starts one."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--type", "process"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield
    # The worker and any flow run process it started. SIGKILL at once: Prefect 3.9's process worker does not exit
    # on SIGTERM or SIGINT while idle (it waited out the full 15 s here every time), and nothing here needs it to.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _triggered_runs(deployment: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[deployment.split("/")[1]])), flow_run_filter=FlowRunFilter())


def _wait_finished(deployment: str, timeout: float = 480) -> FlowRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _triggered_runs(deployment)
        if runs and runs[0].state is not None and runs[0].state.is_final():
            return runs[0]
        time.sleep(2)
    raise AssertionError(f"no finished run of {deployment} within {timeout}s: {_triggered_runs(deployment)}")


def test_staging_a_new_version_retrains_on_exactly_that_version(
    s3: S3, mlflow_uri: str, prefect_api: str, inference_port: int, worker: None, tmp_path: Path
) -> None:
    settings = load_settings().model_copy(update={"local_work_pool": POOL})
    with get_client(sync_client=True) as client:  # the session's server may hold one another test rescheduled
        try:
            client.delete_deployment(client.read_deployment_by_name("pipeline-flow/local").id)
        except ObjectNotFound:
            pass
    assert "pipeline-flow/local-new-data" in deploy_local(settings)
    with get_client(sync_client=True) as client:  # the local schedule exists, paused until the user says so
        scheduled = client.read_deployment_by_name("pipeline-flow/local")
        assert [(s.schedule.cron, s.active) for s in scheduled.schedules] == [  # type: ignore[union-attr]
            (settings.local_pipeline_cron, False)]

    source = write_demo_source(tmp_path / "source")
    env = {**os.environ, "SHIPYARD_PREFECT_API_URL": prefect_api}
    staged = subprocess.run([SHIPYARD, "data", "stage", "digits", str(source)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert staged.returncode == 0, staged.stderr[-3000:]
    assert "announced digits@" in staged.stdout
    version = staged.stdout.split("@", 1)[1].split()[0]

    run = _wait_finished("pipeline-flow/local-new-data")
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.parameters["dataset"] == {"name": "digits", "version": version}
    assert run.name == f"pipeline digits@{version[:8]} e10"  # the UI says what runs
    # The model it registered was trained on exactly the announced version.
    tracking = MlflowClient(mlflow_uri)
    experiment = tracking.get_experiment_by_name(os.environ["SHIPYARD_MLFLOW_EXPERIMENT"])
    assert experiment is not None
    trained = tracking.search_runs([experiment.experiment_id])
    assert [r.data.tags["shipyard.dataset_version"] for r in trained] == [version]

    # Staging the same files again announces nothing: there is no new version to train on.
    again = subprocess.run([SHIPYARD, "data", "stage", "digits", str(source)], capture_output=True, text=True,
                           timeout=300, env=env)
    assert again.returncode == 0 and "already staged" in again.stdout and "announced" not in again.stdout
