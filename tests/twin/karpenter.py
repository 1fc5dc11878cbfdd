"""Karpenter (karpenter.sh/v1 NodePool) as the twin's provisioner: a pending pod gets a new node or Karpenter's reason.

``provision(pending_pods, nodepools, nodes)`` follows Karpenter's scheduler (kubernetes-sigs/karpenter
pkg/controllers/provisioning/scheduling/scheduler.go ``add`` and nodeclaim.go ``CanAdd``) for each pod the
kube-scheduler could not place: first a node launched earlier in the same batch, else each NodePool in turn:

1. limits: instance types whose capacity would take the pool past ``spec.limits`` (counted over the capacity of
   the nodes it already launched) are dropped; none left is "all available instance types exceed limits for
   nodepool: "train"";
2. the pool's template taints must be tolerated ("did not tolerate taint");
3. the pod's nodeSelector/required affinity must be compatible with the template labels and requirements
   ("incompatible requirements, ...", or a custom label the pool never sets: "label "x" does not have known
   values");
4. an instance type of the allowed families, capacity types and architectures must hold the pod's requests plus
   the overhead of the DaemonSets that would run there ("no instance type has enough resources, ...").

The cheapest fitting type is launched (EC2 Fleet's lowest-price allocation). Karpenter assumes a GPU instance's
GPUs will be advertised; whether they are is up to the device plugin (``nodes.advertise_gpus``), so a pool in a
cluster without one launches nodes its GPU pods can never use, as on EKS. Each refusal reads as Karpenter's
``FailedScheduling`` event: "Failed to schedule pod, incompatible with nodepool ...".

Consolidation is modelled only as ``WhenEmpty``: ``removable(...)`` names the pool's nodes with no pods but
DaemonSet pods and none annotated ``karpenter.sh/do-not-disrupt``; how long they were empty is the caller's clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.twin.nodes import (
    INSTANCE_TYPES,
    InstanceType,
    advertise_gpus,
    allocatable,
    daemonset_runs_on,
    instance_type,
    node_object,
    private_dns,
    well_known_labels,
)
from tests.twin.quantity import amount, render
from tests.twin.scheduler import expression_matches, place, pod_requests, requested_on, untolerated_taint

NODEPOOL = "karpenter.sh/nodepool"
CAPACITY_TYPE = "karpenter.sh/capacity-type"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
# v1.WellKnownLabels plus the AWS provider's: a pod may require these without the pool naming them.
WELL_KNOWN = {NODEPOOL, CAPACITY_TYPE, "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
              "node.kubernetes.io/instance-type", "kubernetes.io/arch", "kubernetes.io/os",
              "karpenter.k8s.aws/instance-family", "karpenter.k8s.aws/instance-size",
              "karpenter.k8s.aws/instance-gpu-count", "karpenter.k8s.aws/instance-cpu",
              "karpenter.k8s.aws/instance-memory", "karpenter.k8s.aws/instance-category"}
_DISK_GIB = 20  # EC2NodeClass default root volume; a class's blockDeviceMappings override it


@dataclass(frozen=True)
class Launch:
    """Karpenter's answer for one pending pod: the node it launched (None: none) and its message."""

    pod: str
    node: dict[str, Any] | None
    message: str


@dataclass
class Cluster:
    """What Karpenter sees: the region and VPC it launches into, and the DaemonSets every new node will run."""

    region: str = "us-west-2"
    cidr: str = "192.168.0.0/16"
    daemonsets: Sequence[Mapping[str, Any]] = field(default_factory=list)
    disk_gib: Mapping[str, int] = field(default_factory=dict)  # EC2NodeClass name -> root volume size


def instance_labels(itype: InstanceType, capacity_type: str) -> dict[str, str]:
    """Return the labels Karpenter's AWS provider knows for an instance type offering."""
    return {"node.kubernetes.io/instance-type": itype.name, "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux", CAPACITY_TYPE: capacity_type,
            "karpenter.k8s.aws/instance-family": itype.family, "karpenter.k8s.aws/instance-size": itype.size,
            "karpenter.k8s.aws/instance-category": itype.family[0],
            "karpenter.k8s.aws/instance-gpu-count": str(itype.gpus),
            "karpenter.k8s.aws/instance-cpu": str(itype.vcpus),
            "karpenter.k8s.aws/instance-memory": str(itype.memory_gib * 1024)}


def _template(pool: Mapping[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    template = pool["spec"]["template"]
    labels = {**((template.get("metadata") or {}).get("labels") or {}), NODEPOOL: pool["metadata"]["name"]}
    spec = template.get("spec") or {}
    return labels, list(spec.get("taints") or []), list(spec.get("requirements") or [])


def _pod_expressions(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    expressions = [{"key": k, "operator": "In", "values": [v]} for k, v in (spec.get("nodeSelector") or {}).items()]
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    return expressions + list((terms[0] if terms else {}).get("matchExpressions") or [])  # Karpenter: first term


def _requirement(expression: Mapping[str, Any]) -> str:
    if expression["operator"] in {"Exists", "DoesNotExist"}:
        return f"{expression['key']} {expression['operator']}"
    return f"{expression['key']} {expression['operator']} [{' '.join(sorted(expression.get('values') or []))}]"


def _incompatible(pool: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    labels, _, requirements = _template(pool)
    for expression in _pod_expressions(pod):
        key = expression["key"]
        if key in labels and not expression_matches(expression, {key: labels[key]}):
            return (f"incompatible requirements, key {key}, {_requirement(expression)} not in "
                    f"{key} In [{labels[key]}]")
        defined = key in labels or key in WELL_KNOWN or any(r["key"] == key for r in requirements)
        if not defined and expression["operator"] not in {"NotIn", "DoesNotExist"}:
            return f'incompatible requirements, label "{key}" does not have known values'
    return None


def _offerings(pool: Mapping[str, Any], pod: Mapping[str, Any]) -> list[tuple[InstanceType, dict[str, str]]]:
    """Return the (instance type, node labels) the pool may launch that the pod's requirements also allow."""
    labels, _, requirements = _template(pool)
    out = []
    for itype in INSTANCE_TYPES.values():
        for capacity_type in ("on-demand", "spot"):
            node_labels = {**instance_labels(itype, capacity_type), **labels}
            wanted = [*requirements, *_pod_expressions(pod)]
            if all(expression_matches(e, node_labels) if e["key"] in node_labels or e["key"] in labels
                   else e["operator"] in {"NotIn", "DoesNotExist"} or e["key"] in WELL_KNOWN for e in wanted):
                out.append((itype, node_labels))
    return out


def _resources(counted: Mapping[str, int]) -> str:
    return json.dumps({k: render(k, v) for k, v in sorted(counted.items()) if v}, separators=(",", ":"))


def _overhead(cluster: Cluster, labels: Mapping[str, str], taints: list[dict[str, Any]]) -> dict[str, int]:
    probe = {"metadata": {"name": "probe", "labels": dict(labels)}, "spec": {"taints": taints}}
    total, _ = requested_on({"spec": d["spec"]["template"]["spec"]} for d in cluster.daemonsets
                            if daemonset_runs_on(d, probe))
    total["pods"] = sum(1 for d in cluster.daemonsets if daemonset_runs_on(d, probe))
    return total


def _launched_capacity(pool: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for node in nodes:
        labels = node["metadata"].get("labels") or {}
        if labels.get(NODEPOOL) == pool["metadata"]["name"]:
            itype = instance_type(labels["node.kubernetes.io/instance-type"])
            for name, value in (("cpu", itype.vcpus * 1000), ("memory", itype.memory_gib * 2**30),
                                ("nvidia.com/gpu", itype.gpus)):
                total[name] = total.get(name, 0) + value
    return total


def _within_limits(pool: Mapping[str, Any], itype: InstanceType, launched: Mapping[str, int]) -> bool:
    own = {"cpu": itype.vcpus * 1000, "memory": itype.memory_gib * 2**30, "nvidia.com/gpu": itype.gpus}
    limits = pool["spec"].get("limits") or {}
    return all(own.get(name, 0) <= amount(name, limit) - launched.get(name, 0) for name, limit in limits.items())


def _fits(itype: InstanceType, need: Mapping[str, int], disk_gib: int) -> bool:
    have = {k: amount(k, v) for k, v in allocatable(itype, disk_gib, True).items()}
    return all(value <= have.get(name, 0) for name, value in need.items() if value)


def _try_pool(pool: Mapping[str, Any], pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]],
              cluster: Cluster) -> tuple[tuple[InstanceType, dict[str, str]] | None, str]:
    name = pool["metadata"]["name"]
    labels, taints, requirements = _template(pool)
    launched = _launched_capacity(pool, nodes)
    candidates = _offerings(pool, pod)
    if candidates and not any(_within_limits(pool, it, launched) for it, _ in candidates):
        return None, f'all available instance types exceed limits for nodepool: "{name}"'
    overhead = _overhead(cluster, labels, taints)
    prefix = f'incompatible with nodepool "{name}", daemonset overhead={_resources(overhead)}, '
    taint = untolerated_taint((pod.get("spec") or {}).get("tolerations") or [], taints)
    if taint is not None:
        shown = f"{taint['key']}={taint['value']}:{taint['effect']}" if taint.get("value") \
            else f"{taint['key']}:{taint['effect']}"
        return None, prefix + f"did not tolerate taint (taint={shown})"
    if (problem := _incompatible(pool, pod)) is not None:
        return None, prefix + problem
    need = pod_requests(pod)
    need["pods"] = 1
    for key, value in overhead.items():
        need[key] = need.get(key, 0) + value
    disk = cluster.disk_gib.get(((pool["spec"]["template"].get("spec") or {}).get("nodeClassRef") or {})
                                .get("name", ""), _DISK_GIB)
    fitting = [(it, lb) for it, lb in candidates if _within_limits(pool, it, launched) and _fits(it, need, disk)]
    if not fitting:
        shown = ", ".join(_requirement(r) for r in sorted([*requirements, *_pod_expressions(pod)],
                                                          key=lambda r: str(r["key"])))
        why = "no instance type met all requirements" if not candidates else "no instance type has enough resources"
        return None, prefix + f"{why}, requirements={shown}, resources={_resources(need)}"
    return min(fitting, key=lambda pair: (pair[0].price * (0.4 if pair[1][CAPACITY_TYPE] == "spot" else 1),
                                          pair[0].name)), ""


def _new_node(pool: Mapping[str, Any], itype: InstanceType, labels: dict[str, str], index: int,
              cluster: Cluster) -> dict[str, Any]:
    _, taints, _ = _template(pool)
    zone = f"{cluster.region}a"
    all_labels = {**well_known_labels(itype, cluster.region, zone), **labels, "karpenter.sh/registered": "true",
                  "karpenter.sh/initialized": "true"}
    disk = cluster.disk_gib.get(((pool["spec"]["template"].get("spec") or {}).get("nodeClassRef") or {})
                                .get("name", ""), _DISK_GIB)
    node = node_object(private_dns(cluster.cidr, 4096 + index, cluster.region), all_labels, taints, itype, disk)
    return advertise_gpus(node, cluster.daemonsets)


def provision(pending_pods: Sequence[Mapping[str, Any]], nodepools: Sequence[Mapping[str, Any]],
              nodes: Sequence[Mapping[str, Any]], cluster: Cluster | None = None) -> list[Launch]:
    """Decide, pod by pod as Karpenter does, which new nodes the pools launch for pods left Pending."""
    cluster = cluster or Cluster()
    launched: list[dict[str, Any]] = []
    bound: dict[str, list[Mapping[str, Any]]] = {}
    results = []
    for pod in pending_pods:
        pod_name = (pod.get("metadata") or {}).get("name", "")
        placed = place(pod, launched, bound)
        if placed.node is not None:
            bound.setdefault(placed.node, []).append(pod)
            results.append(Launch(pod_name, None, f"pod fits on node {placed.node} launched for an earlier pod"))
            continue
        errors = []
        for pool in sorted(nodepools, key=lambda p: (-int(p["spec"].get("weight", 0)), p["metadata"]["name"])):
            choice, error = _try_pool(pool, pod, [*nodes, *launched], cluster)
            if choice is None:
                errors.append(error)
                continue
            node = _new_node(pool, choice[0], choice[1], len(nodes) + len(launched), cluster)
            launched.append(node)
            bound[node["metadata"]["name"]] = [pod]
            results.append(Launch(pod_name, node, f"launched {choice[0].name} for nodepool "
                                  f'"{pool["metadata"]["name"]}"'))
            break
        else:
            results.append(Launch(pod_name, None, "Failed to schedule pod, " + "; ".join(errors)))
    return results


def _daemon_pod(pod: Mapping[str, Any]) -> bool:
    return any(o.get("kind") == "DaemonSet" for o in (pod.get("metadata") or {}).get("ownerReferences") or [])


def removable(nodepools: Sequence[Mapping[str, Any]], nodes: Sequence[Mapping[str, Any]],
              pods_on_nodes: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Return the names of empty nodes that a ``WhenEmpty`` pool may consolidate away."""
    empty_pools = {p["metadata"]["name"] for p in nodepools
                   if (p["spec"].get("disruption") or {}).get("consolidationPolicy") == "WhenEmpty"}
    out = []
    for node in nodes:
        meta = node["metadata"]
        if (meta.get("labels") or {}).get(NODEPOOL) not in empty_pools:
            continue
        if (meta.get("annotations") or {}).get(DO_NOT_DISRUPT) == "true":
            continue
        pods = [p for p in pods_on_nodes.get(meta["name"], ()) if (p.get("status") or {}).get("phase")
                not in {"Succeeded", "Failed"}]
        blocked = any(((p.get("metadata") or {}).get("annotations") or {}).get(DO_NOT_DISRUPT) == "true"
                      for p in pods)
        if not blocked and all(_daemon_pod(p) for p in pods):
            out.append(meta["name"])
    return sorted(out)
