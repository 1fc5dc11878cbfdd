"""The twin's nodes, scheduler and Karpenter over the real infra/ files and the real pod templates.

Each test shows an enforcement catching the mistake it exists for: a pod without the GPU toleration, a GPU
request with no room, a Deployment surge beyond the node group, a NodePool at its limit, GPUs without a device
plugin; and that infra/ as docs/cluster.md applies it gives the dedicated training cluster's GPUs a device plugin and
the inference groups room for the rolling update's surge.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shipyard.kube import inference
from shipyard.settings import Settings
from tests.infra import CLUSTER_CONFIGS, INFRA, REPO, load_all
from tests.twin import docsteps, karpenter
from tests.twin.controllers import ControllerManager
from tests.twin.nodes import (
    GPU,
    UnknownInstanceType,
    allocatable,
    daemonset_runs_on,
    eksctl_device_plugin,
    instance_type,
    nodes_from_infra,
    role_of,
)
from tests.twin.scheduler import Placement, place, pod_requests, unschedulable_condition
from tests.twin.store import Store
from tests.unit.test_kube_job_template import TYPICAL, render

UNIFIED, DEDICATED_TRAINING, DEDICATED_INFERENCE = (load_all(p)[0] for p in CLUSTER_CONFIGS)
TRAIN_POOL = next(d for d in load_all(INFRA / "karpenter" / "train.yaml") if d["kind"] == "NodePool")
TRAIN_CLASS_DISK = {"train": 200}  # infra/karpenter/train.yaml EC2NodeClass blockDeviceMappings


def training_pod(name: str = "train-0", **values: Any) -> dict[str, Any]:
    """Return the pod of the gpu-train Job as prefect-kubernetes renders it."""
    job = render({**TYPICAL, **values})
    spec = copy.deepcopy(job["spec"]["template"]["spec"])
    spec.pop("parallelism"), spec.pop("completions")
    return {"metadata": {"name": name, "namespace": "shipyard",
                         **copy.deepcopy(job["spec"]["template"].get("metadata") or {})}, "spec": spec}


def inference_pods(count: int) -> list[dict[str, Any]]:
    settings = Settings(mlflow_tracking_uri="http://mlflow.shipyard.svc:5000", image="123.dkr.ecr.aws/shipyard:1")
    template = inference.deployment(settings, "m", "1")["spec"]["template"]
    return [{"metadata": {**copy.deepcopy(template["metadata"]), "name": f"shipyard-inference-{i}",
                          "namespace": "shipyard"}, "spec": copy.deepcopy(template["spec"])} for i in range(count)]


def schedule_all(pods: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> list[Placement]:
    """Place pods one after the other, each seeing the ones placed before it."""
    bound: dict[str, list[dict[str, Any]]] = {}
    out = []
    for pod in pods:
        placement = place(pod, nodes, bound)
        if placement.node:
            bound.setdefault(placement.node, []).append(pod)
        out.append(placement)
    return out


def documented_daemonsets() -> dict[str, list[dict[str, Any]]]:
    """Return, by cluster name, the DaemonSets docs/cluster.md applies with kubectl, loaded from infra/.

    A command without --context goes to the cluster the last ``eksctl create cluster`` made (eksctl makes its
    context current); --context names one that ``kubectl config rename-context`` named.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    contexts: dict[str, str] = {}
    current = ""
    for command in (c for step in docsteps.steps() for c in step.commands):
        argv = command.argv
        if command.kind == "eksctl-create-cluster":
            current = load_all(REPO / command.files[0])[0]["metadata"]["name"]
        elif command.kind == "kubectl-config-rename-context":
            contexts[argv[-1]] = current
        elif command.kind == "kubectl-apply":
            target = contexts[argv[argv.index("--context") + 1]] if "--context" in argv else current
            found.setdefault(target, []).extend(
                d for path in command.files for d in load_all(REPO / path) if d["kind"] == "DaemonSet")
    return found


APPLIED = documented_daemonsets()


def applied(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the DaemonSets the docs apply to this cluster after eksctl made it."""
    return APPLIED.get(config["metadata"]["name"], [])


def cluster_for(config: dict[str, Any]) -> karpenter.Cluster:
    plugin = eksctl_device_plugin(config)
    return karpenter.Cluster(cidr=config.get("vpc", {}).get("cidr", "192.168.0.0/16"),
                             daemonsets=[*([plugin] if plugin else []), *applied(config)], disk_gib=TRAIN_CLASS_DISK)


MISMATCH = "node(s) didn't match Pod's node affinity/selector"
NOT_HELPFUL = "Preemption is not helpful for scheduling"


def reasons(counts: dict[str, int]) -> str:
    """Return the scheduler's reasons as kube-scheduler's FitError joins them: "<count> <reason>", sorted."""
    return ", ".join(sorted(f"{count} {reason}" for reason, count in counts.items()))


def group_size(config: dict[str, Any], role: str) -> int:
    """Return how many nodes the config's managed node groups of this role start with."""
    return sum(int(g["desiredCapacity"]) for g in config["managedNodeGroups"] if g["labels"]["role"] == role)


# --- nodes from infra/ -------------------------------------------------------------------------------------


def test_allocatable_is_what_the_eks_ami_leaves_the_pods() -> None:
    # m6i.xlarge on EKS: 4 vCPU less 80m, 16Gi less 255Mi + 11Mi * 58 pods and the 100Mi eviction threshold.
    assert allocatable(instance_type("m6i.xlarge"), 50, False)["cpu"] == "3920m"
    assert allocatable(instance_type("m6i.xlarge"), 50, False)["memory"] == f"{(16384 - 893 - 100) * 1024}Ki"
    assert instance_type("m6i.large").max_pods == 29 and instance_type("g6.48xlarge").max_pods == 737


def test_an_unknown_instance_type_is_an_error_naming_it() -> None:
    config = copy.deepcopy(UNIFIED)
    config["managedNodeGroups"][1]["instanceType"] = "p5.48xlarge"
    with pytest.raises(UnknownInstanceType, match=r"'p5\.48xlarge' is not modelled"):
        nodes_from_infra(config)


@pytest.mark.parametrize(("config", "roles"), [(UNIFIED, {"system", "inference"}),
                                               (DEDICATED_TRAINING, {"system"}),
                                               (DEDICATED_INFERENCE, {"system", "inference"})],
                         ids=["unified", "dedicated-training", "dedicated-inference"])
def test_node_groups_appear_at_their_desired_size_with_the_role_the_templates_select(
        config: dict[str, Any], roles: set[str]) -> None:
    nodes = nodes_from_infra(config)
    assert [role_of(n) for n in nodes] == [g["labels"]["role"] for g in config["managedNodeGroups"]
                                           for _ in range(int(g["desiredCapacity"]))]
    assert {role_of(n) for n in nodes} == roles
    inference_nodes = [n for n in nodes if role_of(n) == "inference"]
    for node in inference_nodes:
        labels = node["metadata"]["labels"]
        assert labels["eks.amazonaws.com/nodegroup"] == "inference"
        assert labels["node.kubernetes.io/instance-type"] == "g6.xlarge"
        assert node["spec"]["taints"] == [{"key": GPU, "value": "true", "effect": "NoSchedule"}]
        assert node["status"]["allocatable"][GPU] == "1"  # eksctl installed the device plugin for this group


def test_eksctl_installs_the_device_plugin_only_where_a_node_group_has_gpus() -> None:
    assert eksctl_device_plugin(UNIFIED) is not None
    assert eksctl_device_plugin(DEDICATED_INFERENCE) is not None
    # Karpenter's GPU nodes do not count: eksctl looks only at its own node groups' instance types.
    assert eksctl_device_plugin(DEDICATED_TRAINING) is None


def test_a_gpu_node_group_without_a_device_plugin_advertises_no_gpus_and_gpu_pods_stay_pending() -> None:
    nodes = nodes_from_infra(UNIFIED, device_plugin=False)
    assert all(GPU not in n["status"]["allocatable"] for n in nodes)
    placement = place(inference_pods(1)[0], nodes, {})
    assert placement.node is None
    gpu, other = group_size(UNIFIED, "inference"), group_size(UNIFIED, "system")
    assert placement.message == (
        f"0/{gpu + other} nodes are available: {reasons({'Insufficient nvidia.com/gpu': gpu, MISMATCH: other})}. "
        f"no new claims to deallocate, preemption: 0/{gpu + other} nodes are available: "
        f"{reasons({'No preemption victims found for incoming pod': gpu, NOT_HELPFUL: other})}.")


def test_a_device_plugin_daemonset_decides_by_its_own_selector_which_nodes_advertise() -> None:
    plugin = eksctl_device_plugin(UNIFIED)
    assert plugin is not None
    plugin["spec"]["template"]["spec"]["tolerations"] = []  # forgets the GPU taint: never runs on GPU nodes
    assert all(GPU not in n["status"]["allocatable"] for n in nodes_from_infra(UNIFIED, device_plugin=plugin))


# --- the training pod and Karpenter --------------------------------------------------------------------------


def test_a_training_pod_lands_only_on_a_node_karpenter_launches_for_the_train_pool() -> None:
    nodes = nodes_from_infra(UNIFIED)
    pod = training_pod()
    before = place(pod, nodes, {})
    assert before.node is None
    assert before.message.startswith(f"0/{len(nodes)} nodes are available: {len(nodes)} {MISMATCH}.")
    [launch] = karpenter.provision([pod], [TRAIN_POOL], nodes, cluster_for(UNIFIED))
    assert launch.node is not None, launch.message
    labels = launch.node["metadata"]["labels"]
    assert (labels["role"], labels[karpenter.NODEPOOL], labels[karpenter.CAPACITY_TYPE]) == ("train", "train",
                                                                                           "on-demand")
    assert labels["karpenter.k8s.aws/instance-family"] in {"g6e", "g6", "g5"}
    assert int(launch.node["status"]["allocatable"][GPU]) >= int(str(TYPICAL["gpu_count"]))
    assert place(pod, [*nodes, launch.node], {}).node == launch.node["metadata"]["name"]


def test_a_training_pod_without_the_gpu_toleration_is_refused_by_the_taint() -> None:
    nodes = nodes_from_infra(UNIFIED)
    [launch] = karpenter.provision([training_pod()], [TRAIN_POOL], nodes, cluster_for(UNIFIED))
    assert launch.node is not None
    pod = training_pod("untolerating")
    del pod["spec"]["tolerations"]
    placement = place(pod, [launch.node], {})
    assert placement.message == (
        "0/1 nodes are available: 1 node(s) had untolerated taint(s). no new claims to deallocate, preemption: "
        "0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
    [refusal] = karpenter.provision([pod], [TRAIN_POOL], nodes, cluster_for(UNIFIED))
    assert refusal.node is None
    assert refusal.message.startswith('Failed to schedule pod, incompatible with nodepool "train", ')
    assert refusal.message.endswith("did not tolerate taint (taint=nvidia.com/gpu=true:NoSchedule)")


def test_a_gpu_request_with_no_room_left_stays_pending_with_the_schedulers_message() -> None:
    nodes = nodes_from_infra(UNIFIED)
    first = training_pod("first")
    [launch] = karpenter.provision([first], [TRAIN_POOL], nodes, cluster_for(UNIFIED))
    assert launch.node is not None
    node = launch.node["metadata"]["name"]
    placement = place(training_pod("second"), [*nodes, launch.node], {node: [first]})
    assert placement.node is None
    total, others = len(nodes) + 1, len(nodes)
    assert placement.message == (
        f"0/{total} nodes are available: {reasons({'Insufficient nvidia.com/gpu': 1, MISMATCH: others})}. "
        f"no new claims to deallocate, preemption: 0/{total} nodes are available: "
        f"{reasons({'No preemption victims found for incoming pod': 1, NOT_HELPFUL: others})}.")
    finished = {**first, "status": {"phase": "Succeeded"}}
    assert place(training_pod("second"), [*nodes, launch.node], {node: [finished]}).node == node


def test_a_nodepool_at_its_gpu_limit_refuses_to_launch() -> None:
    nodes = nodes_from_infra(UNIFIED)
    pods = [training_pod(f"train-{i}") for i in range(5)]  # 4 GPUs each; the pool's limit is 16
    launches = karpenter.provision(pods, [TRAIN_POOL], nodes, cluster_for(UNIFIED))
    assert [launch.node is not None for launch in launches] == [True, True, True, True, False]
    assert launches[-1].message == 'Failed to schedule pod, all available instance types exceed limits for ' \
                                   'nodepool: "train"'
    # Counted over the nodes already there, not only this batch: with four running, one more is refused too.
    running = [launch.node for launch in launches if launch.node]
    [again] = karpenter.provision([training_pod("late", gpu_count=1)], [TRAIN_POOL], [*nodes, *running],
                                  cluster_for(UNIFIED))
    assert again.node is None and "exceed limits" in again.message


def test_a_pod_selecting_a_role_the_pool_never_labels_is_incompatible() -> None:
    pod = training_pod()
    pod["spec"]["nodeSelector"] = {"role": "inference"}
    [refusal] = karpenter.provision([pod], [TRAIN_POOL], nodes_from_infra(UNIFIED), cluster_for(UNIFIED))
    assert refusal.node is None
    assert refusal.message.endswith("incompatible requirements, key role, role In [inference] not in role In [train]")


def test_only_empty_nodes_without_do_not_disrupt_pods_are_consolidated() -> None:
    nodes = nodes_from_infra(UNIFIED)
    pods = [training_pod("a"), training_pod("b")]
    new = [launch.node for launch in karpenter.provision(pods, [TRAIN_POOL], nodes, cluster_for(UNIFIED))
           if launch.node]
    a, b = (n["metadata"]["name"] for n in new)
    daemon = {"metadata": {"name": "plugin", "ownerReferences": [{"kind": "DaemonSet", "name": "nvidia"}]}}
    plain = {"metadata": {"name": "plain"}, "spec": {}}
    assert karpenter.removable([TRAIN_POOL], [*nodes, *new], {a: [daemon], b: [pods[1]]}) == [a]
    assert karpenter.removable([TRAIN_POOL], [*nodes, *new], {a: [plain], b: []}) == [b]
    assert pods[1]["metadata"]["annotations"][karpenter.DO_NOT_DISRUPT] == "true"
    held = {**daemon, "metadata": {**daemon["metadata"], "annotations": {karpenter.DO_NOT_DISRUPT: "true"}}}
    assert karpenter.removable([TRAIN_POOL], new, {a: [held], b: []}) == [b]


def test_in_the_dedicated_topology_the_training_pod_gets_its_gpus() -> None:
    # eksctl installs no device plugin there: the one docs/cluster.md applies from infra/ advertises the GPUs.
    [plugin] = applied(DEDICATED_TRAINING)
    assert eksctl_device_plugin(DEDICATED_TRAINING) is None and plugin["metadata"]["namespace"] == "kube-system"
    nodes = nodes_from_infra(DEDICATED_TRAINING, daemonsets=[plugin])
    pod = training_pod()
    [launch] = karpenter.provision([pod], [TRAIN_POOL], nodes, cluster_for(DEDICATED_TRAINING))
    assert launch.node is not None  # Karpenter launches: it assumes the GPUs will be advertised
    assert int(launch.node["status"]["allocatable"][GPU]) >= int(str(TYPICAL["gpu_count"]))
    assert place(pod, [*nodes, launch.node], {}).node == launch.node["metadata"]["name"]


def test_without_the_documented_device_plugin_the_dedicated_training_pod_stays_pending() -> None:
    nodes = nodes_from_infra(DEDICATED_TRAINING)
    pod = training_pod()
    bare = karpenter.Cluster(cidr=DEDICATED_TRAINING["vpc"]["cidr"], disk_gib=TRAIN_CLASS_DISK)
    [launch] = karpenter.provision([pod], [TRAIN_POOL], nodes, bare)
    assert launch.node is not None and GPU not in launch.node["status"]["allocatable"]
    assert "Insufficient nvidia.com/gpu" in place(pod, [*nodes, launch.node], {}).message


def test_the_twins_controllers_give_karpenters_new_nodes_the_gpus_of_a_stored_device_plugin() -> None:
    def run(daemonsets: list[dict[str, Any]]) -> dict[str, Any]:
        store = Store()
        for item in nodes_from_infra(DEDICATED_TRAINING):
            store.put("nodes", item)
        store.put("nodepools", TRAIN_POOL)
        for daemonset in daemonsets:
            store.put("daemonsets", daemonset)
        store.put("pods", training_pod())
        ControllerManager(store).settle()
        pod = store.get("pods", "shipyard", "train-0")
        assert pod is not None
        return pod

    node_name = run(applied(DEDICATED_TRAINING))["spec"].get("nodeName")
    assert node_name is not None and node_name not in {n["metadata"]["name"] for n in
                                                       nodes_from_infra(DEDICATED_TRAINING)}
    pending = run([])  # no plugin: Karpenter's node comes up, its GPUs are never advertised
    assert "Insufficient nvidia.com/gpu" in pending["status"]["conditions"][0]["message"]


def test_the_applied_device_plugin_runs_on_gpu_nodes_only() -> None:
    [plugin] = applied(DEDICATED_TRAINING)
    system = nodes_from_infra(DEDICATED_TRAINING, daemonsets=[plugin])
    [launch] = karpenter.provision([training_pod()], [TRAIN_POOL], system, cluster_for(DEDICATED_TRAINING))
    assert launch.node is not None
    assert [daemonset_runs_on(plugin, n) for n in [*system, launch.node]] == [False] * len(system) + [True]
    # The same file covers a GPU node group of either role (it would run on the inference group's nodes too).
    assert all(daemonset_runs_on(plugin, n) for n in nodes_from_infra(DEDICATED_INFERENCE) if role_of(n) ==
               "inference")


# --- the inference Deployment on its node group ---------------------------------------------------------------


def test_an_inference_pod_fits_the_unified_inference_group_and_one_beyond_its_gpus_does_not() -> None:
    nodes = nodes_from_infra(UNIFIED)
    gpu, other = group_size(UNIFIED, "inference"), group_size(UNIFIED, "system")
    *placed, beyond = schedule_all(inference_pods(gpu + 1), nodes)
    roles = {n["metadata"]["name"]: role_of(n) for n in nodes}
    assert [roles.get(p.node or "") for p in placed] == ["inference"] * gpu
    assert len({p.node for p in placed}) == gpu  # one per node
    assert beyond.node is None
    # A g6.xlarge holds one such pod on every count: 2 CPUs and 8Gi of 3920m and 15391Mi, 1 GPU of 1.
    insufficient = {f"Insufficient {r}": gpu for r in ("cpu", "memory", GPU)}
    assert beyond.message.startswith(f"0/{gpu + other} nodes are available: "
                                     f"{reasons({**insufficient, MISMATCH: other})}.")


@pytest.mark.parametrize("config", [UNIFIED, DEDICATED_INFERENCE], ids=["unified", "dedicated-inference"])
def test_the_inference_group_has_room_for_the_replicas_and_their_surge(config: dict[str, Any]) -> None:
    surge = inference.deployment(Settings(mlflow_tracking_uri="http://m:5000", image="i:1"), "m", "1")["spec"]
    wanted = surge["replicas"] + surge["strategy"]["rollingUpdate"]["maxSurge"]
    assert all(p.node for p in schedule_all(inference_pods(wanted), nodes_from_infra(config)))
    # minSize holds them too: nothing scales the group up for the surge.
    [group] = [g for g in config["managedNodeGroups"] if g["name"] == "inference"]
    assert group["minSize"] >= wanted and group["maxSize"] >= group["desiredCapacity"] >= wanted


# --- the scheduler's rules on their own -------------------------------------------------------------------------


def node(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec,
            "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"}}}


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": [{"name": "c"}], **spec}}


def test_node_affinity_operators() -> None:
    nodes = [node("small", {"gpus": "1", "zone": "a"}), node("big", {"gpus": "8"})]
    def affinity(*expressions: dict[str, Any]) -> dict[str, Any]:
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": list(expressions)}]}}}
    cases: dict[str, list[dict[str, Any]]] = {"big": [{"key": "gpus", "operator": "Gt", "values": ["4"]}],
             "small": [{"key": "gpus", "operator": "Lt", "values": ["4"]}, {"key": "zone", "operator": "Exists"}]}
    for want, expressions in cases.items():
        assert place(pod(affinity=affinity(*expressions)), nodes, {}).node == want
    assert place(pod(affinity=affinity({"key": "zone", "operator": "DoesNotExist"})), nodes, {}).node == "big"
    assert place(pod(affinity=affinity({"key": "zone", "operator": "NotIn", "values": ["a"]})), nodes, {}).node \
        == "big"
    assert place(pod(affinity=affinity({"key": "gpus", "operator": "In", "values": ["2"]})), nodes, {}).node is None


def test_tolerations_and_cordoned_nodes() -> None:
    tainted = node("tainted", taints=[{"key": "k", "value": "v", "effect": "NoExecute"}])
    assert place(pod(), [tainted], {}).node is None
    assert place(pod(tolerations=[{"operator": "Exists"}]), [tainted], {}).node == "tainted"
    assert place(pod(tolerations=[{"key": "k", "value": "w"}]), [tainted], {}).node is None
    assert place(pod(tolerations=[{"key": "k", "operator": "Equal", "value": "v"}]), [tainted], {}).node == "tainted"
    cordoned = place(pod(), [node("cordoned", unschedulable=True)], {})
    assert cordoned.message.startswith("0/1 nodes are available: 1 node(s) were unschedulable.")


def test_requests_default_to_limits_and_init_containers_take_the_max() -> None:
    spec = {"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}},
                           {"name": "b", "resources": {"requests": {"cpu": "1"}}}]}
    assert pod_requests({"spec": spec}) == {"cpu": 3000, "memory": 2**30}
    full = place(pod(containers=[{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "15872Mi"}}}]),
                 [node("n")], {"n": [{"spec": spec}]})
    assert "1 Insufficient cpu, 1 Insufficient memory" in full.message


def test_the_least_allocated_node_wins_and_ties_go_by_name() -> None:
    busy = {"spec": {"containers": [{"name": "x", "resources": {"requests": {"cpu": "2"}}}]}}
    assert place(pod(), [node("b"), node("a")], {}).node == "a"
    assert place(pod(), [node("b"), node("a")], {"a": [busy]}).node == "b"


def test_the_unschedulable_condition_and_event_carry_the_message() -> None:
    refusal = unschedulable_condition("0/1 nodes are available: ...")
    assert refusal.condition["type"] == "PodScheduled" and refusal.condition["status"] == "False"
    assert refusal.condition["reason"] == "Unschedulable"
    assert (refusal.event["type"], refusal.event["reason"]) == ("Warning", "FailedScheduling")
    assert refusal.event["message"] == refusal.condition["message"]
