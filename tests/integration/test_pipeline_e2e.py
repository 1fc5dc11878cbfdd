"""The whole pipeline against real servers: S3 (moto over HTTP), an MLflow server, a Prefect server."""

from __future__ import annotations

import httpx
import mlflow
import numpy as np
from mlflow import MlflowClient
from sklearn.datasets import load_digits

from flows.pipeline import pipeline_flow
from shipyard.params import DatasetParams, RegisterParams, TrainParams
from tests.integration.conftest import S3


def _state(s3: S3, keys: list[str]) -> dict[str, tuple[str, str]]:
    heads = {k: s3.client.head_object(Bucket=s3.bucket, Key=k) for k in keys}
    return {k: (head["ETag"], str(head["LastModified"])) for k, head in heads.items()}


def test_pipeline_stages_trains_registers_and_serves_then_skips_on_rerun(
    s3: S3, mlflow_uri: str, prefect_api: str, inference_port: int, model_name: str
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
