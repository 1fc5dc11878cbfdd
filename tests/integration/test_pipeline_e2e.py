"""The whole pipeline against real servers: S3 (moto over HTTP), an MLflow server, a Prefect server."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import mlflow
import numpy as np
from mlflow import MlflowClient
from sklearn.datasets import load_digits

from flows.pipeline import pipeline_flow
from shipyard.datasets.demo import resolve_source
from shipyard.params import DatasetParams, RegisterParams, RolloutParams, TrainParams
from shipyard.pipeline import up_to_date
from shipyard.rollout.local import LocalTarget
from shipyard.settings import load_settings
from tests.stack import S3


def _state(s3: S3, keys: list[str]) -> dict[str, tuple[str, str]]:
    heads = {k: s3.client.head_object(Bucket=s3.bucket, Key=k) for k in keys}
    return {k: (head["ETag"], str(head["LastModified"])) for k, head in heads.items()}


def test_pipeline_stages_trains_registers_and_serves_then_skips_on_rerun(
    s3: S3, mlflow_uri: str, prefect_api: str, inference_port: int, model_name: str, tmp_path: Path
) -> None:
    training = TrainParams(epochs=4, hidden_units=64)
    result = pipeline_flow(training=training, registry=RegisterParams(model_name=model_name))

    # Stage: every dataset object and the manifest are in the bucket.
    keys = s3.keys("store/")
    manifest_key = f"store/datasets/digits/versions/{result.dataset.version}.json"
    assert manifest_key in keys
    assert len([k for k in keys if k.startswith("store/objects/")]) == 4
    assert any(k.startswith(f"store/training/{result.train_key}/checkpoints/") for k in keys)

    # Register: MLflow has the run, with the dataset lineage, and the version is champion.
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["epochs"] == "4"
    assert run.data.tags["shipyard.dataset_version"] == result.dataset.version
    assert run.inputs.dataset_inputs[0].dataset.digest == result.dataset.version
    assert len(client.get_metric_history(result.mlflow_run_id, "val_accuracy")) == 4
    champion = client.get_model_version_by_alias(model_name, "champion")
    assert champion.version == result.model_version == result.served_version

    # Serve: the endpoint answers exactly what the registered model predicts.
    rows = (load_digits().data[:5] / 16.0).astype(np.float32)
    answer = httpx.post(f"{result.endpoint}/invocations", json={"inputs": rows.tolist()}, timeout=30)
    assert answer.status_code == 200
    mlflow.set_registry_uri(mlflow_uri)
    expected = mlflow.pyfunc.load_model(f"models:/{model_name}@champion").predict(rows)
    np.testing.assert_allclose(np.array(answer.json()["predictions"]), expected, rtol=1e-5, atol=1e-6)
    assert httpx.get(f"{result.endpoint}/version").json()["model_version"] == result.model_version
    assert result.metrics["val_accuracy"] > 0.8

    # Rerun with unchanged inputs: nothing is staged, trained or registered again.
    watched = [k for k in s3.keys("store/") if not k.startswith("store/mlflow")]
    before = _state(s3, watched)
    again = pipeline_flow(training=training, registry=RegisterParams(model_name=model_name))
    assert again.dataset == result.dataset and again.train_key == result.train_key
    assert [k for k in s3.keys("store/") if not k.startswith("store/mlflow")] == watched  # nothing new
    assert _state(s3, watched) == before  # nothing rewritten
    assert [v.version for v in client.search_model_versions(f"name = '{model_name}'")] == [result.model_version]
    assert again.mlflow_run_id == result.mlflow_run_id

    # What `shipyard run` asks before starting a flow: every step is done, so it answers what the rerun did,
    # without a flow run and without writing anything.
    settings = load_settings()
    registry = RegisterParams(model_name=model_name)
    done = up_to_date(settings, DatasetParams(), training, registry, RolloutParams())
    assert done is not None and done.flow_run_id is None
    assert done.model_copy(update={"flow_run_id": again.flow_run_id}) == again
    same_bytes = tmp_path / "same-bytes"
    shutil.copytree(resolve_source("demo", settings.home), same_bytes)  # content-addressed: the same version
    assert up_to_date(settings, DatasetParams(source=str(same_bytes)), training, registry, RolloutParams()) == done
    (same_bytes / "notes.txt").write_text("one more file\n")  # new bytes: a version to stage
    assert up_to_date(settings, DatasetParams(source=str(same_bytes)), training, registry, RolloutParams()) is None
    assert up_to_date(settings, DatasetParams(), training.model_copy(update={"epochs": 5}), registry,
                      RolloutParams()) is None  # no such training yet
    assert up_to_date(settings, DatasetParams(), training, registry, RolloutParams(), force=True) is None
    assert [k for k in s3.keys("store/") if not k.startswith("store/mlflow")] == watched
    assert _state(s3, watched) == before

    # The champion version carries its lineage, down to the Prefect run that registered it.
    tags = client.get_model_version(model_name, result.model_version).tags
    assert tags["shipyard.prefect.flow_run_id"] == result.flow_run_id
    assert tags["shipyard.dataset_version"] == result.dataset.version and tags["shipyard.gate.decision"] == "promoted"

    # A worse model on the same staged version: registered as challenger, nothing rolled out.
    worse = pipeline_flow(dataset=DatasetParams(version=result.dataset.version),
                          training=TrainParams(epochs=1, hidden_units=2, learning_rate=1e-4),
                          registry=RegisterParams(model_name=model_name))
    assert worse.gate_outcome == "challenger" and not worse.rolled_out and worse.endpoint is None
    assert worse.champion_version == result.model_version and "does not beat" in worse.gate_reason
    assert client.get_model_version_by_alias(model_name, "challenger").version == worse.model_version
    assert httpx.get(f"{result.endpoint}/version").json()["model_version"] == result.model_version

    # Registered but not champion: work to do (the gate), as for a champion that nothing serves.
    assert up_to_date(settings, DatasetParams(version=result.dataset.version),
                      TrainParams(epochs=1, hidden_units=2, learning_rate=1e-4), registry, RolloutParams()) is None
    assert up_to_date(settings, DatasetParams(), training, registry, RolloutParams()) is not None
    LocalTarget(settings).stop()
    assert up_to_date(settings, DatasetParams(), training, registry, RolloutParams()) is None
