"""Nodes as infra/ makes them: eksctl managed node groups at their sizes, and the instance types behind them.

Each node is the Node object the API server would hold (plain dict): the group's labels plus the well-known ones
EKS sets, its taints, and ``status.capacity``/``allocatable`` of its instance type as the EKS AMI's bootstrap
(nodeadm) configures the kubelet. ``nvidia.com/gpu`` appears only on nodes where an NVIDIA device plugin pod
runs: eksctl installs its DaemonSet when the ClusterConfig has a (managed) node group of an NVIDIA instance type
on an AL2/AL2023 AMI (eksctl pkg/eks/tasks.go ``ClusterTasksForNodeGroups``, default ``--install-nvidia-plugin``),
and never for GPU nodes that only Karpenter launches; the DaemonSet it applies (pkg/addons/assets/
nvidia-device-plugin.yaml) has no nodeSelector and tolerates ``nvidia.com/gpu:NoSchedule``, so it runs on
every node, Karpenter's included, and advertises the GPUs of those that have them. A device plugin applied with
kubectl (infra/k8s/nvidia-device-plugin.yaml, where eksctl installs none) counts the same way wherever it runs.

Karpenter NodePools (karpenter.sh/v1) live in ``tests.twin.karpenter``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.twin.quantity import amount, render
from tests.twin.scheduler import selects_node, untolerated_taint

GPU = "nvidia.com/gpu"
_GIB = 2**30
_MIB = 2**20


@dataclass(frozen=True)
class InstanceType:
    """An EC2 instance type as the kubelet sees it. ``enis``/``ips_per_eni`` are EC2's network limits."""

    name: str
    vcpus: int
    memory_gib: int
    gpus: int
    enis: int
    ips_per_eni: int
    price: float  # on-demand USD/hour in us-west-2, approximate: only orders Karpenter's choice

    @property
    def family(self) -> str:
        return self.name.split(".")[0]

    @property
    def size(self) -> str:
        return self.name.split(".")[1]

    @property
    def max_pods(self) -> int:
        """EKS's max pods without prefix delegation: ENIs * (IPv4 addresses per ENI - 1) + 2.

        amazon-eks-ami nodeadm/internal/kubelet/eni_max_pods.go ``calculateStandardMaxPods`` (the same numbers
        as the AMI's eni-max-pods.txt), limits from nodeadm/internal/kubelet/instance-info.jsonl.
        """
        return self.enis * (self.ips_per_eni - 1) + 2


def _types(family: str, price: float, rows: Iterable[tuple[str, int, int, int, int, int, float]]) -> dict[str, Any]:
    return {f"{family}.{size}": InstanceType(f"{family}.{size}", cpu, mem, gpus, enis, ips, price * factor)
            for size, cpu, mem, gpus, enis, ips, factor in rows}


# vCPUs, memory (GiB), GPUs (EC2 instance type pages); ENIs and IPv4 per ENI (amazon-eks-ami instance-info.jsonl).
INSTANCE_TYPES: dict[str, InstanceType] = {
    **_types("m6i", 0.192, [("large", 2, 8, 0, 3, 10, 0.5), ("xlarge", 4, 16, 0, 4, 15, 1.0)]),
    **_types("g5", 1.006, [
        ("xlarge", 4, 16, 1, 4, 15, 1.0), ("2xlarge", 8, 32, 1, 4, 15, 1.205), ("4xlarge", 16, 64, 1, 8, 30, 1.614),
        ("8xlarge", 32, 128, 1, 8, 30, 2.433), ("12xlarge", 48, 192, 4, 15, 50, 5.638),
        ("16xlarge", 64, 256, 1, 8, 30, 4.072), ("24xlarge", 96, 384, 4, 15, 50, 8.095),
        ("48xlarge", 192, 768, 8, 7, 50, 16.19)]),
    **_types("g6", 0.805, [
        ("xlarge", 4, 16, 1, 4, 15, 1.0), ("2xlarge", 8, 32, 1, 4, 15, 1.215), ("4xlarge", 16, 64, 1, 8, 30, 1.644),
        ("8xlarge", 32, 128, 1, 8, 30, 2.503), ("12xlarge", 48, 192, 4, 8, 30, 5.718),
        ("16xlarge", 64, 256, 1, 15, 50, 4.221), ("24xlarge", 96, 384, 4, 15, 50, 8.295),
        ("48xlarge", 192, 768, 8, 15, 50, 16.59)]),
    **_types("g6e", 1.861, [
        ("xlarge", 4, 32, 1, 4, 15, 1.0), ("2xlarge", 8, 64, 1, 4, 15, 1.205), ("4xlarge", 16, 128, 1, 8, 30, 1.614),
        ("8xlarge", 32, 256, 1, 8, 30, 2.433), ("12xlarge", 48, 384, 4, 10, 30, 5.638),
        ("16xlarge", 64, 512, 1, 15, 50, 4.072), ("24xlarge", 96, 768, 4, 10, 50, 8.095),
        ("48xlarge", 192, 1536, 8, 10, 50, 16.19)]),
}


class UnknownInstanceType(KeyError):
    """An instance type the twin has no figures for."""

    def __str__(self) -> str:
        return (f"instance type {self.args[0]!r} is not modelled in tests/twin/nodes.py INSTANCE_TYPES "
                f"(add its vCPUs, memory, GPUs and ENI limits)")


def instance_type(name: str) -> InstanceType:
    """Return a modelled instance type; an unknown one is an error naming it."""
    if name not in INSTANCE_TYPES:
        raise UnknownInstanceType(name)
    return INSTANCE_TYPES[name]


def kube_reserved_cpu_millis(vcpus: int) -> int:
    """CPU the AMI reserves for the kubelet: 6% of the first core, 1% of the second, 0.5% of the next two,
    0.25% of the rest (amazon-eks-ami nodeadm/internal/kubelet/config.go ``getCPUMillicoresToReserve``)."""
    total = vcpus * 1000
    steps = ((0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, total, 25))
    return sum((min(total, end) - start) * share // 10000 for start, end, share in steps if total > start)


def kube_reserved_memory_mib(max_pods: int) -> int:
    """Memory the AMI reserves for the kubelet: 255Mi + 11Mi per pod (config.go ``getMemoryMebibytesToReserve``)."""
    return 255 + 11 * max_pods


def capacity(itype: InstanceType, disk_gib: int, gpus_advertised: bool) -> dict[str, str]:
    """Return the node's status.capacity (memory: the instance's nominal size; the kernel keeps a little less)."""
    out = {"cpu": str(itype.vcpus), "memory": render("memory", itype.memory_gib * _GIB),
           "ephemeral-storage": render("ephemeral-storage", disk_gib * _GIB), "pods": str(itype.max_pods)}
    if gpus_advertised and itype.gpus:
        out[GPU] = str(itype.gpus)
    return out


def allocatable(itype: InstanceType, disk_gib: int, gpus_advertised: bool) -> dict[str, str]:
    """Return status.allocatable: capacity less kube-reserved and the eviction thresholds the AMI sets
    (config.go: kubeReserved cpu/memory as above and ephemeral-storage 1Gi; evictionHard memory.available 100Mi,
    nodefs.available 10%)."""
    cap = {name: amount(name, value) for name, value in capacity(itype, disk_gib, gpus_advertised).items()}
    cap["cpu"] -= kube_reserved_cpu_millis(itype.vcpus)
    cap["memory"] -= (kube_reserved_memory_mib(itype.max_pods) + 100) * _MIB
    cap["ephemeral-storage"] -= _GIB + cap["ephemeral-storage"] // 10
    return {name: render(name, value) for name, value in cap.items()}


def _eksctl_gpu_groups(cluster_config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    groups = [*(cluster_config.get("managedNodeGroups") or []), *(cluster_config.get("nodeGroups") or [])]
    return [g for g in groups if any(instance_type(t).gpus for t in _group_types(g))
            and g.get("amiFamily", "AmazonLinux2023") in {"AmazonLinux2", "AmazonLinux2023"}]


def eksctl_device_plugin(cluster_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return the NVIDIA device plugin DaemonSet ``eksctl create cluster`` applies for this config, or None."""
    gpu_groups = _eksctl_gpu_groups(cluster_config)
    if not gpu_groups:
        return None
    tolerations = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    for group in gpu_groups:  # eksctl adds a toleration for each taint of its GPU groups (SetTolerations)
        for taint in group.get("taints") or []:
            if all(t["key"] != taint["key"] for t in tolerations):
                tolerations.append({"key": taint["key"], "operator": "Exists", "effect": taint["effect"]})
    return device_plugin_daemonset(tolerations)


def device_plugin_daemonset(tolerations: Sequence[Mapping[str, Any]],
                            node_selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return an NVIDIA device plugin DaemonSet (eksctl's manifest) with these tolerations and nodeSelector."""
    spec: dict[str, Any] = {"tolerations": [dict(t) for t in tolerations], "priorityClassName": "system-node-critical",
                            "containers": [{"name": "nvidia-device-plugin-ctr",
                                            "image": "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"}]}
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"name": "nvidia-device-plugin-ds"}},
                     "template": {"metadata": {"labels": {"name": "nvidia-device-plugin-ds"}}, "spec": spec}}}


def daemonset_runs_on(daemonset: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Say whether a DaemonSet's pod lands on the node: its nodeSelector/affinity select it, its tolerations
    cover the node's NoSchedule/NoExecute taints (the DaemonSet controller's own check)."""
    spec = daemonset["spec"]["template"]["spec"]
    taints = (node.get("spec") or {}).get("taints") or []
    return selects_node(spec, node) and untolerated_taint(spec.get("tolerations") or [], taints) is None


def is_device_plugin(daemonset: Mapping[str, Any]) -> bool:
    """Say whether a DaemonSet runs the NVIDIA device plugin (by its image, as whatever chart installs it)."""
    containers = daemonset["spec"]["template"]["spec"].get("containers") or []
    return any("k8s-device-plugin" in (c.get("image") or "") for c in containers)


def advertise_gpus(node: dict[str, Any], daemonsets: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Set the node's nvidia.com/gpu capacity and allocatable as the device plugins among ``daemonsets`` make
    them: the instance's GPUs where a device plugin pod runs on it, none elsewhere. Returns the node."""
    labels = node["metadata"]["labels"]
    itype = instance_type(labels["node.kubernetes.io/instance-type"])
    plugged = any(is_device_plugin(d) and daemonset_runs_on(d, node) for d in daemonsets)
    for part in ("capacity", "allocatable"):
        node["status"][part].pop(GPU, None)
        if plugged and itype.gpus:
            node["status"][part][GPU] = str(itype.gpus)
    return node


def _group_types(group: Mapping[str, Any]) -> list[str]:
    return [group["instanceType"]] if group.get("instanceType") else list(group.get("instanceTypes") or [])


def node_object(name: str, labels: dict[str, str], taints: Sequence[Mapping[str, Any]], itype: InstanceType,
                disk_gib: int) -> dict[str, Any]:
    """Return a Ready Node of this instance type (no GPUs advertised yet: see ``advertise_gpus``)."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {**labels, "kubernetes.io/hostname": name}},
            "spec": {"taints": [dict(t) for t in taints]} if taints else {},
            "status": {"capacity": capacity(itype, disk_gib, False),
                       "allocatable": allocatable(itype, disk_gib, False),
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}


def well_known_labels(itype: InstanceType, region: str, zone: str) -> dict[str, str]:
    """Return the labels the kubelet and the cloud provider put on every EC2 node."""
    return {"node.kubernetes.io/instance-type": itype.name, "beta.kubernetes.io/instance-type": itype.name,
            "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone,
            "kubernetes.io/arch": "amd64", "beta.kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
            "beta.kubernetes.io/os": "linux"}


def private_dns(cidr: str, index: int, region: str) -> str:
    """Return an EC2 private DNS name (the node name on EKS) for the index-th address of the VPC."""
    address = ipaddress.ip_network(cidr)[256 + index]
    return f"ip-{str(address).replace('.', '-')}.{region}.compute.internal"


def _group_nodes(cluster_config: Mapping[str, Any], group: Mapping[str, Any], first: int) -> list[dict[str, Any]]:
    meta = cluster_config["metadata"]
    region, cidr = meta["region"], (cluster_config.get("vpc") or {}).get("cidr", "192.168.0.0/16")
    itype = instance_type(_group_types(group)[0])  # the first type: eksctl lists them in preference order
    capacity_type = "SPOT" if group.get("spot") else "ON_DEMAND"
    nodes = []
    for i in range(int(group.get("desiredCapacity", group.get("minSize", 2)))):
        labels = {**well_known_labels(itype, region, f"{region}{'abc'[i % 3]}"),
                  "eks.amazonaws.com/nodegroup": group["name"], "eks.amazonaws.com/capacityType": capacity_type,
                  "alpha.eksctl.io/cluster-name": meta["name"], "alpha.eksctl.io/nodegroup-name": group["name"],
                  **{k: str(v) for k, v in (group.get("labels") or {}).items()}}
        nodes.append(node_object(private_dns(cidr, first + i, region), labels, group.get("taints") or [], itype,
                                 int(group.get("volumeSize", 80))))
    return nodes


def nodes_from_infra(cluster_config: Mapping[str, Any], device_plugin: bool | Mapping[str, Any] | None = None,
                     daemonsets: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Return the nodes of an eksctl ClusterConfig's managed node groups at their desiredCapacity.

    ``device_plugin``: None (default) advertises GPUs where the DaemonSet that eksctl itself installs runs;
    a DaemonSet dict, where that one runs; True or False forces GPUs on every GPU node, or on none.
    ``daemonsets``: DaemonSets applied to the cluster after eksctl made it (``kubectl apply``); a device plugin
    among them advertises GPUs where it runs too (unless ``device_plugin`` forces them).
    """
    nodes: list[dict[str, Any]] = []
    for group in cluster_config.get("managedNodeGroups") or []:
        nodes += _group_nodes(cluster_config, group, len(nodes))
    if isinstance(device_plugin, bool):
        forced = [device_plugin_daemonset([{"operator": "Exists"}])] if device_plugin else []
        return [advertise_gpus(n, forced) for n in nodes]
    plugin = eksctl_device_plugin(cluster_config) if device_plugin is None else device_plugin
    running = [*([plugin] if plugin else []), *daemonsets]
    return [advertise_gpus(n, running) for n in nodes]


def role_of(node: Mapping[str, Any]) -> str | None:
    """Return the node's ``role`` label (train, inference, system), the one the pod templates select."""
    return (node["metadata"].get("labels") or {}).get("role")
