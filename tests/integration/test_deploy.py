"""`shipyard deploy cluster` creates the Kubernetes pools and the cluster deployments on a real Prefect server."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from deployments import for_environment
from deployments.apply import IMAGE_WORKDIR, deploy_cluster
from shipyard.settings import Settings


def test_cluster_deployments_land_on_their_kubernetes_pools(prefect_api: str) -> None:
    settings = Settings(image="registry.example/shipyard:1.2.3", train_work_pool="deploy-gpu-train",
                        pipeline_work_pool="deploy-cpu", store_uri="s3://ml-store/shipyard",
                        mlflow_tracking_uri="https://mlflow.internal")
    names = deploy_cluster(settings)
    assert set(names) == {d.full_name for d in for_environment("cluster")}
    with get_client(sync_client=True) as client:
        train_pool = client.read_work_pool("deploy-gpu-train")
        assert train_pool.type == "kubernetes"
        assert train_pool.base_job_template["variables"]["additionalProperties"] is False
        train = client.read_deployment_by_name("train-flow/cluster")
        assert train.work_pool_name == "deploy-gpu-train"
        assert train.job_variables["image"] == "registry.example/shipyard:1.2.3"
        # Pods run the image's code where it is: a set_working_directory pull step, no path (which Prefect would
        # copy into a fresh workspace for every run).
        assert train.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                     {"directory": str(IMAGE_WORKDIR)}}]
        assert train.path is None and train.entrypoint == "flows/train.py:train_flow"
        # Pods reach the same store and MLflow as the deploying machine, and the pipeline trains on the cluster.
        assert train.job_variables["env"]["SHIPYARD_STORE_URI"] == "s3://ml-store/shipyard"
        assert train.job_variables["env"]["SHIPYARD_MLFLOW_TRACKING_URI"] == "https://mlflow.internal"
        pipeline = client.read_deployment_by_name("pipeline-flow/cluster")
        assert pipeline.work_pool_name == "deploy-cpu"
        assert pipeline.job_variables["service_account_name"] == "prefect-worker"
        assert pipeline.job_variables["env"]["SHIPYARD_TRAIN_MODE"] == "cluster"
        # The nightly schedule is created paused: nothing runs on the cluster until the user turns it on.
        assert [(s.schedule.cron, s.active) for s in pipeline.schedules] == [("0 2 * * *", False)]
        triggered = client.read_deployment_by_name("pipeline-flow/cluster-new-data")
        assert triggered.job_variables["env"]["SHIPYARD_TRAIN_MODE"] == "cluster" and not triggered.schedules


def test_a_mistyped_job_variable_is_rejected_by_the_train_pool(prefect_api: str) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    settings = Settings(train_work_pool="deploy-gpu-train-typo", pipeline_work_pool="deploy-cpu-typo")
    deploy_cluster(settings)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("train-flow/cluster")
        with pytest.raises(PrefectHTTPStatusError, match="gpu_cont"):
            client.create_flow_run_from_deployment(
                deployment.id, parameters={"dataset": {"name": "digits", "version": "0" * 16}},
                job_variables={"gpu_cont": 2})


def test_a_tracking_uri_with_credentials_is_never_written_into_a_deployment(prefect_api: str) -> None:
    from shipyard.errors import ConfigError

    settings = Settings(train_work_pool="deploy-gpu-train-secret", pipeline_work_pool="deploy-cpu-secret",
                        mlflow_tracking_uri="https://bob:s3cret@mlflow.internal")
    with pytest.raises(ConfigError, match="SHIPYARD_MLFLOW_TRACKING_URI carries credentials") as info:
        deploy_cluster(settings)
    assert "s3cret" not in str(info.value)
    with get_client(sync_client=True) as client:  # refused before anything was created
        assert "deploy-gpu-train-secret" not in {p.name for p in client.read_work_pools()}
