"""The gpu-train work pool's base job template, rendered the way prefect-kubernetes renders it for a flow run."""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from deployments.job_template import load
from shipyard.errors import ConfigError
from tests.infra import kubernetes_version

# The EKS version the infra targets (infra/eks/cluster.yaml); kubernetes-validate 1.37.0 bundles 1.25 to 1.37.
EKS_KUBERNETES = kubernetes_version()
TYPICAL = {"image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/shipyard:0.1.0", "gpu_count": 4,
           "env": {"SHIPYARD_STORE_URI": "s3://ml-store/shipyard"}, "namespace": "shipyard",
           "memory_limit": "64Gi", "unschedulable_timeout_seconds": 600}


def render(values: dict[str, Any], template: str = "gpu-train") -> dict[str, Any]:
    """Return the Job manifest a Kubernetes worker would create for a flow run with these job variables."""
    # A client is passed only so that rendering does not start a temporary Prefect server; with no block
    # references in the template it is never called.
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
        load(template), values, client=PrefectClient("http://127.0.0.1:9/api")))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="calm-otter", flow_id=uuid.uuid4()))
    return copy.deepcopy(config.job_manifest)


def without_prefect_pod_fields(job: dict[str, Any]) -> dict[str, Any]:
    """Drop exactly the two fields prefect-kubernetes insists on in the pod spec (the API server drops them)."""
    pod = job["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    return job


@pytest.mark.parametrize("values", [{}, TYPICAL], ids=["defaults", "typical"])
def test_the_rendered_job_passes_strict_validation_for_the_eks_version(values: dict[str, Any]) -> None:
    job = without_prefect_pod_fields(render(values))
    kubernetes_validate.validate(job, EKS_KUBERNETES, strict=True)


def test_the_rendered_pipeline_job_passes_strict_validation_and_runs_on_system_nodes() -> None:
    job = without_prefect_pod_fields(render({"image": TYPICAL["image"]}, template="pipeline"))
    kubernetes_validate.validate(job, EKS_KUBERNETES, strict=True)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"role": "system"}
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"


def test_strict_validation_lets_nothing_else_through() -> None:
    with pytest.raises(kubernetes_validate.ValidationError, match="parallelism"):
        kubernetes_validate.validate(render(TYPICAL), EKS_KUBERNETES, strict=True)
    job = without_prefect_pod_fields(render(TYPICAL))
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(job, EKS_KUBERNETES, strict=True)


def test_the_job_lands_on_gpu_train_nodes_and_is_not_evicted_by_autoscalers() -> None:
    job = render(TYPICAL)
    pod = job["spec"]["template"]
    spec = pod["spec"]
    container = spec["containers"][0]
    assert spec["nodeSelector"] == {"role": "train"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["resources"]["limits"]["memory"] == "64Gi"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in spec["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert spec["priorityClassName"] == "shipyard-train" and spec["serviceAccountName"] == "shipyard-train"
    assert job["metadata"]["annotations"]["shipyard.dev/unschedulable-timeout"] == "600s"
    assert job["metadata"]["namespace"] == "shipyard"


def test_disruptions_are_retried_code_errors_fail_fast_and_preemption_is_relinquished() -> None:
    job = render(TYPICAL)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [1, 2, 126, 127]
    assert job["spec"]["activeDeadlineSeconds"] == 86400 and job["spec"]["backoffLimit"] == 3
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "relinquish"
    assert env["SHIPYARD_STORE_URI"] == "s3://ml-store/shipyard"


@pytest.mark.parametrize("values, complaint", [
    ({"gpu_cuont": 2}, "'gpu_cuont' was unexpected"),
    ({"gpu_count": 0}, "0 is less than the minimum of 1"),
    ({"backoff_limit": 0}, "0 is less than the minimum of 1"),
    ({"image_pull_policy": "Sometimes"}, "'Sometimes' is not one of"),
])
def test_a_mistyped_or_invalid_job_variable_is_rejected(values: dict[str, Any], complaint: str) -> None:
    schema = load("gpu-train")["variables"]
    with pytest.raises(jsonschema.ValidationError) as caught:
        jsonschema.validate({"image": "x", **values}, schema)
    assert complaint in caught.value.message


@pytest.mark.parametrize("name", ["gpu-train", "pipeline"])
def test_every_variable_is_documented_and_used(name: str) -> None:
    template = load(name)
    text = str(template["job_configuration"])
    for name, prop in template["variables"]["properties"].items():
        assert prop.get("description"), name
        assert "{{ " + name + " }}" in text, f"variable {name} is never used by the template"


def test_an_unknown_template_name_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"no base job template .*nope\.json \(known: gpu-train"):
        load("nope")
