"""`shipyard deploy cluster` creates the Kubernetes pools and the cluster deployments on a real Prefect server."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from deployments import for_environment
from deployments.apply import IMAGE_WORKDIR, deploy_cluster
from shipyard.settings import Settings


def test_cluster_deployments_land_on_their_kubernetes_pools(prefect_api: str) -> None:
    settings = Settings(image="registry.example/shipyard:1.2.3", train_work_pool="deploy-gpu-train",
                        pipeline_work_pool="deploy-cpu")
    names = deploy_cluster(settings)
    assert set(names) == {d.full_name for d in for_environment("cluster")}
    with get_client(sync_client=True) as client:
        train_pool = client.read_work_pool("deploy-gpu-train")
        assert train_pool.type == "kubernetes"
        assert train_pool.base_job_template["variables"]["additionalProperties"] is False
        train = client.read_deployment_by_name("train-flow/cluster")
        assert train.work_pool_name == "deploy-gpu-train"
        assert train.job_variables["image"] == "registry.example/shipyard:1.2.3"
        assert train.path == str(IMAGE_WORKDIR) and train.entrypoint == "flows/train.py:train_flow"
        pipeline = client.read_deployment_by_name("pipeline-flow/cluster")
        assert pipeline.work_pool_name == "deploy-cpu"
        assert pipeline.job_variables["service_account_name"] == "prefect-worker"
        assert [s.schedule.cron for s in pipeline.schedules] == ["0 2 * * *"]


def test_a_mistyped_job_variable_is_rejected_by_the_train_pool(prefect_api: str) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    settings = Settings(train_work_pool="deploy-gpu-train-typo", pipeline_work_pool="deploy-cpu-typo")
    deploy_cluster(settings)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("train-flow/cluster")
        with pytest.raises(PrefectHTTPStatusError, match="gpu_cont"):
            client.create_flow_run_from_deployment(
                deployment.id, parameters={"dataset": "digits", "dataset_version": "0" * 16},
                job_variables={"gpu_cont": 2})
