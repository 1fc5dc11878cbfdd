"""kube-scheduler's filters and its FailedScheduling message, over plain Pod and Node dicts (the API's JSON).

``place(pod, nodes, pods_on_nodes)`` runs, per node and in the default profile's order, the filters that decide
where Shipyard's pods can go: NodeUnschedulable, TaintToleration, NodeAffinity (nodeSelector and required node
affinity) and NodeResourcesFit (requests against allocatable minus what the node's pods already request, and the
pod count). A node reports the reasons of the first filter it fails, as the framework does. When no node passes,
the message is the scheduler's own, word for word as Kubernetes 1.35 writes it (pkg/scheduler/framework/types.go
``FitError.Error``, plugins/tainttoleration, plugins/nodeaffinity, plugins/noderesources, plugins/
nodeunschedulable, plugins/defaultpreemption, plugins/dynamicresources):

    0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node affinity/selector.
    no new claims to deallocate, preemption: 0/3 nodes are available: 1 No preemption victims found for incoming
    pod, 2 Preemption is not helpful for scheduling.

Since 1.34 the taint filter no longer names the taint ("node(s) had untolerated taint(s)"), and with dynamic
resource allocation on by default (GA in 1.34) its PostFilter adds "no new claims to deallocate" before the
preemption part.

Not modelled: preemption itself (the twin never evicts a lower-priority pod to make room, so a node short of
resources always reports "No preemption victims found"), pod (anti-)affinity, topology spread, host ports,
volumes, preferred affinity and PreferNoSchedule in scoring. Scoring is LeastAllocated over cpu and memory,
ties broken by node name, so placement is deterministic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.twin.quantity import amount

NO_NODES = "no nodes available to schedule pods"
UNSCHEDULABLE = "node(s) were unschedulable"
UNTOLERATED = "node(s) had untolerated taint(s)"
AFFINITY = "node(s) didn't match Pod's node affinity/selector"
TOO_MANY_PODS = "Too many pods"
NO_VICTIMS = "No preemption victims found for incoming pod"
NOT_HELPFUL = "Preemption is not helpful for scheduling"
NO_CLAIMS = "no new claims to deallocate"
_UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
_TERMINAL = {"Succeeded", "Failed"}
_NAMED = ("cpu", "memory", "ephemeral-storage")


@dataclass(frozen=True)
class Placement:
    """Where a pod goes (``node``), or None and the scheduler's FailedScheduling message."""

    node: str | None
    message: str


@dataclass(frozen=True)
class Verdict:
    """One node's filter result: the reasons it refused (none: it fits), and whether preemption could help."""

    reasons: tuple[str, ...] = ()
    resolvable: bool = False


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    """Return a container's requests; a limit stands in for a missing request, as the API server defaults it."""
    resources = container.get("resources") or {}
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: amount(name, value) for name, value in merged.items()}


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for name, value in more.items():
        into[name] = into.get(name, 0) + value


def pod_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """Return what the scheduler reserves for a pod: CPU in millicores, memory and storage in bytes, devices.

    App containers and restartable (sidecar) init containers add up; each ordinary init container runs alone
    beside the sidecars started before it, so the pod needs the larger of the two (the "max rule"); plus the
    pod's overhead.
    """
    spec = _spec(pod)
    total: dict[str, int] = {}
    sidecars: dict[str, int] = {}
    peak: dict[str, int] = {}
    for init in spec.get("initContainers") or []:
        own = _container_requests(init)
        if init.get("restartPolicy") == "Always":
            _add(sidecars, own)
            continue
        running = dict(sidecars)
        _add(running, own)
        for name, value in running.items():
            peak[name] = max(peak.get(name, 0), value)
    for container in spec.get("containers") or []:
        _add(total, _container_requests(container))
    _add(total, sidecars)
    for name, value in peak.items():
        total[name] = max(total.get(name, 0), value)
    _add(total, {name: amount(name, value) for name, value in (spec.get("overhead") or {}).items()})
    return total


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Say whether one toleration tolerates one taint (empty effect: all effects; no key with Exists: all keys)."""
    if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    if not toleration.get("key"):
        return operator == "Exists"
    if toleration.get("key") != taint.get("key"):
        return False
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taint(tolerations: Iterable[Mapping[str, Any]], taints: Iterable[Mapping[str, Any]],
                      effects: tuple[str, ...] = ("NoSchedule", "NoExecute")) -> Mapping[str, Any] | None:
    """Return the first taint of these effects that no toleration tolerates, or None."""
    tolerations = list(tolerations)
    for taint in taints:
        if taint.get("effect") in effects and not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


def _integer(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Evaluate one node selector requirement (In, NotIn, Exists, DoesNotExist, Gt, Lt) against labels."""
    key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in {"Gt", "Lt"}:
        have, bound = _integer(labels.get(key, "")), _integer(values[0]) if len(values) == 1 else None
        if have is None or bound is None:
            return False
        return have > bound if operator == "Gt" else have < bound
    raise ValueError(f"node selector operator {operator!r} is not a valid operator")


def _term_matches(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term selects nothing
    labels = node["metadata"].get("labels") or {}
    name = {"metadata.name": node["metadata"]["name"]}
    return all(expression_matches(e, labels) for e in expressions) and all(
        expression_matches(f, name) for f in fields)


def selects_node(pod_spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Say whether a pod spec's nodeSelector and required node affinity (terms ORed) both select the node."""
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(key) != value for key, value in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required is None:
        return True
    return any(_term_matches(term, node) for term in required.get("nodeSelectorTerms") or [])


def requested_on(pods: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], int]:
    """Return the summed requests of the non-terminated pods bound to a node, and how many there are."""
    total: dict[str, int] = {}
    count = 0
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in _TERMINAL:
            continue
        _add(total, pod_requests(pod))
        count += 1
    return total, count


def allocatable(node: Mapping[str, Any]) -> dict[str, int]:
    """Return a node's status.allocatable, counted as the scheduler counts it."""
    return {name: amount(name, value) for name, value in ((node.get("status") or {}).get("allocatable") or {})
            .items()}


def _fit(pod: Mapping[str, Any], node: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    want = pod_requests(pod)
    have = allocatable(node)
    used, count = requested_on(pods)
    reasons = [TOO_MANY_PODS] if count + 1 > have.get("pods", 0) else []
    scalars = sorted(name for name in want if name not in _NAMED and name != "pods")
    for name in (*_NAMED, *scalars):
        if want.get(name, 0) > 0 and want[name] > have.get(name, 0) - used.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return tuple(reasons)


def filter_node(pod: Mapping[str, Any], node: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Verdict:
    """Run the filters on one node in the default profile's order; the first that refuses gives the reasons."""
    spec, tolerations = _spec(pod), _spec(pod).get("tolerations") or []
    if _spec(node).get("unschedulable") and not any(tolerates(t, _UNSCHEDULABLE_TAINT) for t in tolerations):
        return Verdict((UNSCHEDULABLE,))
    if untolerated_taint(tolerations, _spec(node).get("taints") or []) is not None:
        return Verdict((UNTOLERATED,))
    if not selects_node(spec, node):
        return Verdict((AFFINITY,))
    return Verdict(_fit(pod, node, pods), resolvable=True)


def _histogram(reasons: Iterable[str]) -> str:
    return ", ".join(sorted(f"{count} {reason}" for reason, count in Counter(reasons).items()))


def failure_message(verdicts: Mapping[str, Verdict]) -> str:
    """Return the FailedScheduling message for a pod that no node took (``verdicts``: one per node)."""
    if not verdicts:
        return NO_NODES
    total = len(verdicts)
    filtered = _histogram(r for v in verdicts.values() for r in v.reasons)
    preemption = _histogram(NO_VICTIMS if v.resolvable else NOT_HELPFUL for v in verdicts.values())
    return (f"0/{total} nodes are available: {filtered}. {NO_CLAIMS}, preemption: 0/{total} nodes are available: "
            f"{preemption}.")


def _free_share(pod: Mapping[str, Any], node: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> float:
    want, have = pod_requests(pod), allocatable(node)
    used, _ = requested_on(pods)
    shares = [(have[name] - used.get(name, 0) - want.get(name, 0)) / have[name]
              for name in ("cpu", "memory") if have.get(name)]
    return sum(shares) / len(shares) if shares else 0.0


def place(pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]],
          pods_on_nodes: Mapping[str, Sequence[Mapping[str, Any]]]) -> Placement:
    """Choose a node for the pod as kube-scheduler would, or say why none fits in the scheduler's words."""
    verdicts = {n["metadata"]["name"]: filter_node(pod, n, pods_on_nodes.get(n["metadata"]["name"], ()))
                for n in nodes}
    feasible = [n for n in nodes if not verdicts[n["metadata"]["name"]].reasons]
    if not feasible:
        return Placement(None, failure_message(verdicts))
    best = min(feasible, key=lambda n: (-_free_share(pod, n, pods_on_nodes.get(n["metadata"]["name"], ())),
                                        n["metadata"]["name"]))
    meta = pod.get("metadata") or {}
    name = best["metadata"]["name"]
    return Placement(name, f"Successfully assigned {meta.get('namespace', 'default')}/{meta.get('name')} to {name}")


@dataclass(frozen=True)
class Unschedulable:
    """What the scheduler records for a pod it could not place: its status condition and its event."""

    condition: dict[str, Any]
    event: dict[str, Any]


def unschedulable_condition(message: str, now: datetime | None = None) -> Unschedulable:
    """Return the PodScheduled=False condition and the FailedScheduling event fields for ``message``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                 "lastProbeTime": None, "lastTransitionTime": stamp}
    event = {"type": "Warning", "reason": "FailedScheduling", "message": message, "action": "Scheduling",
             "reportingComponent": "default-scheduler", "source": {"component": "default-scheduler"}}
    return Unschedulable(condition, event)
