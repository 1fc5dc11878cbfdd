"""Multi-node training manifests: the Indexed Job and headless Service, validated for the cluster's Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from lightkube.resources.core_v1 import Pod

from deployments.job_template import load
from shipyard.errors import ConfigError
from shipyard.kube import indexed
from shipyard.params import TrainParams
from shipyard.settings import Settings
from shipyard.training import node
from shipyard.training.multinode import job_name, pod_env
from tests.infra import kubernetes_version
from tests.twin import podsecurity

EKS_KUBERNETES = kubernetes_version()
PARAMS = TrainParams(epochs=5, nodes=4, procs_per_node=8)


def _plan(params: TrainParams = PARAMS, **changes: Any) -> indexed.JobPlan:
    values: dict[str, Any] = {
        "name": job_name("0123456789abcdef", 1), "namespace": "shipyard", "image": "shipyard:0.1.0",
        "run_id": "3f0c9a52-1111-2222-3333-444455556666", "dataset": "digits", "version": "v1",
        "params_json": indexed.params_json(params), "nodes": params.nodes, "procs_per_node": params.procs_per_node,
        "env": {"SHIPYARD_STORE_URI": "s3://ml-store/shipyard"}, **changes}
    return indexed.JobPlan(**values)


@pytest.mark.parametrize("plan", [_plan(), _plan(TrainParams(nodes=2), pods=indexed.PodResources(shm_size="1Gi"))],
                         ids=["4x8", "2x1"])
def test_the_job_and_service_pass_strict_validation_for_the_eks_version(plan: indexed.JobPlan) -> None:
    kubernetes_validate.validate(indexed.job_manifest(plan), EKS_KUBERNETES, strict=True)
    kubernetes_validate.validate(indexed.service_manifest(plan, "uid-1"), EKS_KUBERNETES, strict=True)


def test_strict_validation_lets_nothing_else_through() -> None:
    job = indexed.job_manifest(_plan())
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(job, EKS_KUBERNETES, strict=True)
    service = indexed.service_manifest(_plan(), "uid-1")
    service["spec"]["clusterIp"] = "None"
    with pytest.raises(kubernetes_validate.ValidationError, match="clusterIp"):
        kubernetes_validate.validate(service, EKS_KUBERNETES, strict=True)


def test_one_pod_per_node_and_one_failed_index_fails_the_job_while_disruptions_are_ignored() -> None:
    spec = indexed.job_manifest(_plan())["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (0, 0)
    template_rules = load("gpu-train")["job_configuration"]["job_manifest"]["spec"]["podFailurePolicy"]["rules"]
    assert spec["podFailurePolicy"]["rules"] == [template_rules[0]]  # DisruptionTarget -> Ignore
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_the_pods_get_the_gpu_train_templates_scheduling_guards_and_defaults() -> None:
    template = load("gpu-train")
    single = template["job_configuration"]["job_manifest"]
    defaults = {name: prop["default"] for name, prop in template["variables"]["properties"].items()}
    job = indexed.job_manifest(_plan())
    pod, single_pod = job["spec"]["template"], single["spec"]["template"]
    for key in ("nodeSelector", "tolerations"):
        assert pod["spec"][key] == single_pod["spec"][key]
    assert single_pod["metadata"]["annotations"].items() <= pod["metadata"]["annotations"].items()  # no-evict
    assert pod["spec"]["volumes"][0]["emptyDir"]["medium"] == "Memory"
    container = pod["spec"]["containers"][0]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    resources = indexed.PodResources()
    for name in ("service_account_name", "priority_class_name", "image_pull_policy", "cpu_request", "memory_request",
                 "memory_limit", "shm_size", "active_deadline_seconds", "termination_grace_period_seconds",
                 "unschedulable_timeout_seconds", "finished_job_ttl"):
        assert getattr(resources, name) == defaults[name], name
    assert job["metadata"]["annotations"]["shipyard.dev/unschedulable-timeout"] == "900s"
    # Shipyard's label, never Prefect's: the observer would mark the train flow Crashed when a lost attempt's Job
    # is deleted.
    assert job["metadata"]["labels"]["shipyard.dev/flow-run-id"] == _plan().run_id
    assert "prefect.io/flow-run-id" not in job["metadata"]["labels"]
    assert "prefect.io/flow-run-id" not in pod["metadata"]["labels"]


def test_the_pods_meet_the_restricted_profile_with_the_gpu_train_templates_security_and_scratch() -> None:
    single_pod = load("gpu-train")["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    job = indexed.job_manifest(_plan())
    pod = job["spec"]["template"]["spec"]
    container, single = pod["containers"][0], single_pod["containers"][0]
    assert pod["securityContext"] == single_pod["securityContext"]
    assert container["securityContext"] == single["securityContext"]
    assert [m for m in single["volumeMounts"] if m["name"] in ("tmp", "home")] == \
        [m for m in container["volumeMounts"] if m["name"] in ("tmp", "home")]
    restricted = {"pod-security.kubernetes.io/enforce": "restricted",
                  "pod-security.kubernetes.io/enforce-version": "v1.35"}
    named = {"metadata": {"name": f"{_plan().name}-0-abcde"}, "spec": pod}
    assert podsecurity.admission_message(restricted, named) is None
    del container["securityContext"]
    assert "allowPrivilegeEscalation != false" in (podsecurity.admission_message(restricted, named) or "")


def test_index_zero_has_a_stable_dns_name_behind_a_headless_service_owned_by_the_job() -> None:
    plan = _plan()
    job, service = indexed.job_manifest(plan), indexed.service_manifest(plan, "uid-42")
    pod = job["spec"]["template"]
    assert pod["spec"]["subdomain"] == service["metadata"]["name"] == plan.name
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": plan.name, "uid": "uid-42"}]
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "shipyard.training.node"]
    endpoint = command[command.index("--rdzv-endpoint") + 1]
    assert endpoint == f"{plan.name}-0.{plan.name}.shipyard.svc:29400"
    assert len(f"{plan.name}-63") <= 63  # pod hostnames are DNS labels


def test_the_pods_read_the_run_params_from_the_pod_annotation_through_the_downward_api() -> None:
    pod = indexed.job_manifest(_plan())["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert TrainParams.model_validate_json(pod["metadata"]["annotations"][indexed.PARAMS_ANNOTATION]) == PARAMS
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "params")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "params")
    path = f"{mount['mountPath']}/{volume['downwardAPI']['items'][0]['path']}"
    assert container["command"][container["command"].index("--params") + 1] == path
    assert indexed.PARAMS_ANNOTATION in volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SHIPYARD_STORE_URI"] == "s3://ml-store/shipyard"


def test_torchrun_gets_the_node_rank_and_index_zero_hosts_the_rendezvous() -> None:
    args = _plan().node_args()
    first, second = (node.torchrun_command(args, rank, Path("/data")) for rank in (0, 1))
    assert "--nnodes=4" in first and "--nproc-per-node=8" in first and "--rdzv-backend=c10d" in first
    assert "--node-rank=0" in first and "--node-rank=1" in second and "--max-restarts=0" in first
    # Reaching index 0's store gets the whole rendezvous budget too, not torch's 60 s read_timeout.
    assert "--rdzv-conf=join_timeout=900,read_timeout=900,is_host=1" in first
    assert "--rdzv-conf=join_timeout=900,read_timeout=900,is_host=0" in second


@pytest.mark.parametrize("index", ["$(JOB_COMPLETION_INDEX)", "4", "-1"])
def test_a_pod_without_a_valid_completion_index_says_so_in_one_line(
        index: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _plan().node_args().argv()
    assert argv[-2:] == ["--node-rank", "$(JOB_COMPLETION_INDEX)"]  # the kubelet expands it in each pod
    assert node.main([*argv[:-1], index]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --node-rank '{index}' is not a node index below 4") and "\n" not in err


def _pod(name: str, index: str, *, code: int | None = None, finished: str = "2026-01-01T00:00:05Z",
         reason: str = "Error", phase: str = "Failed", disrupted: bool = False,
         message: str = "Traceback\nerror: batch_size 5000 is larger\n") -> Pod:
    status: dict[str, Any] = {"phase": phase, "conditions": [], "containerStatuses": []}
    if code is not None:
        status["containerStatuses"] = [{"name": "train", "image": "x", "imageID": "", "ready": False,
                                        "restartCount": 0, "state": {"terminated": {
                                            "exitCode": code, "reason": reason, "finishedAt": finished,
                                            "message": message}}}]
    if disrupted:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    return Pod.from_dict({"metadata": {"name": name, "annotations": {indexed.INDEX_ANNOTATION: index}},
                          "status": status})


def test_the_first_failure_decides_and_a_killed_worker_counts_as_lost() -> None:
    running = _pod("p0", "0", phase="Running")
    peer_failed = _pod("p0", "0", code=1, finished="2026-01-01T00:00:09Z")
    killed = _pod("p1", "1", code=137, reason="OOMKilled", finished="2026-01-01T00:00:05Z")
    found = indexed.failures([running, peer_failed, killed])
    assert [(f.pod, f.lost) for f in found] == [("p1", True), ("p0", False)]
    assert found[0].describe() == ("pod p1 (node 1) ended with exit code 137 (OOMKilled): "
                                   "error: batch_size 5000 is larger")
    own = indexed.failures([_pod("p1", "1", code=1), _pod("p0", "0", code=143, finished="2026-01-01T00:00:07Z")])
    assert not own[0].lost and own[0].exit_code == 1  # a code error first: the others were stopped after it
    assert indexed.failures([_pod("p0", "0", phase="Running", disrupted=True)])[0].lost
    assert indexed.failures([_pod("p1", "1", reason="NodeLost")])[0].lost  # no exit code: the node vanished


def test_a_worker_whose_rendezvous_failed_counts_as_lost_so_the_next_attempt_retries() -> None:
    timed_out = ("torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError: The node 'train-k-1-1' has "
                 "not joined the rendezvous in time.\n")
    unreachable = "torch.distributed.DistStoreError: Timed out after 61 seconds waiting for clients.\n"
    for message in (timed_out, unreachable):
        (found,) = indexed.failures([_pod("p1", "1", code=1, message=message)])
        assert found.lost and found.exit_code == 1, message


def test_the_pods_get_the_store_and_never_credentials() -> None:
    assert pod_env(Settings(store_uri="s3://ml/shipyard")) == {"SHIPYARD_STORE_URI": "s3://ml/shipyard"}
    with pytest.raises(ConfigError, match="SHIPYARD_STORE_URI"):
        pod_env(Settings(store_uri=None))
    with pytest.raises(ConfigError, match="carries credentials"):
        pod_env(Settings(store_uri="s3://key:secret@ml/shipyard"))


def test_the_node_count_and_processes_per_node_are_bounded() -> None:
    with pytest.raises(ValueError, match="nodes"):
        TrainParams(nodes=0)
    with pytest.raises(ValueError, match="procs_per_node"):
        TrainParams(procs_per_node=9)
