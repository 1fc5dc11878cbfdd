"""Every setting a cluster run needs crosses into its pods by one mechanism: the CLUSTER marker on the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.apply import INFERENCE_KUBECONFIG_IN_POD, cluster_env
from shipyard.errors import ConfigError
from shipyard.settings import LOCAL_ONLY, Settings, cluster_fields
from tests.unit.test_kube_job_template import render

# What a pipeline or training pod must see as the deploying machine set it (stated here, on purpose, twice).
CROSSING = {"store_uri", "store_max_attempts", "mlflow_tracking_uri", "mlflow_experiment", "train_mode",
            "train_work_pool", "image", "inference_image", "inference_mlflow_tracking_uri",
            "kube_namespace", "rollout_target", "inference_replicas",
            "inference_gpus", "inference_cpu", "inference_memory", "inference_progress_deadline_seconds"}


def test_the_settings_that_cross_are_exactly_the_stated_ones() -> None:
    assert set(cluster_fields()) == CROSSING


def test_every_setting_either_crosses_or_says_why_it_stays_on_this_machine() -> None:
    fields = set(Settings.model_fields)
    assert set(cluster_fields()) | set(LOCAL_ONLY) == fields
    assert not set(cluster_fields()) & set(LOCAL_ONLY)
    assert all(reason.strip() for reason in LOCAL_ONLY.values())


def test_the_pods_get_the_inference_settings_and_always_roll_out_to_the_cluster() -> None:
    settings = Settings(store_uri="s3://ml/shipyard", mlflow_tracking_uri="http://mlflow.shipyard.svc:5000",
                        inference_replicas=3, inference_gpus=0, inference_memory="2Gi", rollout_target="local",
                        serving_token="s3cr3t-token")
    env = cluster_env(settings)
    assert env["SHIPYARD_ROLLOUT_TARGET"] == "kubernetes"  # a local target would serve inside the pipeline pod
    assert env["SHIPYARD_TRAIN_MODE"] == "cluster"
    assert (env["SHIPYARD_INFERENCE_REPLICAS"], env["SHIPYARD_INFERENCE_GPUS"], env["SHIPYARD_INFERENCE_MEMORY"]) \
        == ("3", "0", "2Gi")
    unset = {"inference_image", "inference_mlflow_tracking_uri"}  # None here: not crossed
    assert set(env) == {f"SHIPYARD_{name.upper()}" for name in CROSSING - unset}
    assert "s3cr3t-token" not in str(env)
    # What the pod reads back is what this machine had, field by field.
    crossed = Settings(**{k.removeprefix("SHIPYARD_").lower(): v for k, v in env.items()})
    for name in CROSSING - {"train_mode", "rollout_target"}:
        assert getattr(crossed, name) == getattr(settings, name), name


def test_a_crossing_value_with_credentials_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^SHIPYARD_MLFLOW_TRACKING_URI carries credentials"):
        cluster_env(Settings(mlflow_tracking_uri="https://user:pw@mlflow.example.com"))


def test_a_dedicated_inference_cluster_reaches_the_pipeline_pod_as_the_mounted_kubeconfig(tmp_path: Path) -> None:
    settings = Settings(inference_kubeconfig=tmp_path / "inference.yaml", inference_kube_context="shipyard-inference")
    env = cluster_env(settings)
    assert env["SHIPYARD_INFERENCE_KUBECONFIG"] == INFERENCE_KUBECONFIG_IN_POD  # not this machine's path
    assert env["SHIPYARD_INFERENCE_KUBE_CONTEXT"] == "shipyard-inference"
    assert str(tmp_path) not in str(env)
    assert "SHIPYARD_INFERENCE_KUBECONFIG" not in cluster_env(Settings())  # unified: the pod's own cluster
    job = render({"image": "shipyard:0.1.0"}, template="pipeline")
    pod = job["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "inference-kubeconfig"]
    assert volume["secret"] == {"secretName": "inference-kubeconfig", "optional": True, "defaultMode": 0o440}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "inference-kubeconfig"]
    assert (mount["mountPath"], mount["readOnly"]) == (str(Path(INFERENCE_KUBECONFIG_IN_POD).parent), True)
