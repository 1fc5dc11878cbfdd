"""Tracking: per-epoch metrics, device and curves reach MLflow and the Prefect UI."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)

from flows.train import train_flow
from shipyard import datasets
from shipyard.datasets.demo import write_demo_source
from shipyard.params import DatasetRef, RegisterParams, TrainParams
from shipyard.registry import Registration
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from tasks.register import register_model
from tests.stack import S3


@flow
def train_and_register(version: str, model_name: str) -> Registration:
    """Train locally, then register: the first two stages of the pipeline."""
    trained = train_flow(DatasetRef(name="digits", version=version), TrainParams(epochs=3))
    return register_model(trained, RegisterParams(model_name=model_name))


def test_metrics_device_and_curves_go_to_mlflow_and_the_prefect_ui(
        s3: S3, mlflow_uri: str, prefect_api: str, model_name: str, tmp_path: Path) -> None:
    version = datasets.stage(filesystem(load_settings()), "digits", str(write_demo_source(tmp_path / "d"))).version
    state = train_and_register(version, model_name, return_state=True)
    registration: Registration = state.result()

    client = MlflowClient(mlflow_uri)
    run = client.get_run(registration.run_id)
    assert run.data.tags["shipyard.device"] == "cpu" and run.data.tags["shipyard.gpu"] == "none"
    assert run.data.tags["shipyard.world_size"] == "1"
    history = client.get_metric_history(registration.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert len(client.get_metric_history(registration.run_id, "train_loss")) == 3
    assert "training-curves.png" in [a.path for a in client.list_artifacts(registration.run_id)]
    png = Path(client.download_artifacts(registration.run_id, "training-curves.png", str(tmp_path)))
    assert png.read_bytes().startswith(b"\x89PNG")

    # Only this test's train-flow run: the Prefect server lives for the session and other tests train too.
    with get_client(sync_client=True) as prefect:
        children = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
        ours = ArtifactFilterFlowRunId(any_=[run.id for run in children])
        curves = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["training-curves"]), flow_run_id=ours))
        table = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["training-metrics"]), flow_run_id=ours))
    assert len(curves) == 1 and str(curves[0].data).count("data:image/png;base64,iVBOR") == 1
    assert len(table) == 1
    rows = table[0].data if isinstance(table[0].data, list) else json.loads(str(table[0].data))
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [row["val_accuracy"] for row in rows] == [round(m.value, 5) for m in sorted(history, key=lambda m: m.step)]
