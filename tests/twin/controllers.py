"""The twin's controller manager: one thread that reconciles every object on each store change (or tick).

    manager = ControllerManager(store, clock=ManualClock(), cluster=karpenter.Cluster())
    manager.settle()                 run passes until one changes nothing (deterministic; what tests call)
    with manager: ...                or run it as kube-controller-manager runs: a thread woken by the store's
                                     condition on every change, and every ``tick`` seconds for deadlines

Each pass, in order, reads and writes only through the store (as the real controllers go through the API):
garbage collection (ownerReferences, foreground and orphan finalizers, pods deleted before they were scheduled),
Deployments and ReplicaSets (deploycontroller.py), Jobs (jobcontroller.py), the scheduling loop (binds pods
without ``spec.nodeName`` by ``scheduler.place``, else PodScheduled=False with a FailedScheduling event; when
NodePools exist, ``karpenter.provision`` launches nodes for the pods left and they are placed again), v1
Endpoints of Services with a selector, and PodDisruptionBudget status. Every decision is level-triggered: a pass
computes from what is stored, so running it twice changes nothing.

Pod deletion: ``controlkit.Context.delete`` sets ``deletionTimestamp`` on a pod bound to a node (the kubelet ends
its processes and removes it); a pod never scheduled, or with no finalizers left and not on a node, goes at once.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tests.twin import karpenter
from tests.twin.controlkit import (
    TERMINAL,
    Clock,
    Context,
    Obj,
    controller_of,
    deleting,
    phase,
    ready,
    real_clock,
    scaled,
    selector_matches,
    set_condition,
)
from tests.twin.deploycontroller import DeploymentController, ReplicaSetController
from tests.twin.jobcontroller import JobController
from tests.twin.resources import BY_KIND, RESOURCES
from tests.twin.scheduler import place, unschedulable_condition
from tests.twin.store import Store

if TYPE_CHECKING:
    from tests.twin import karpenter

log = logging.getLogger(__name__)


class NotSettled(RuntimeError):
    """The controllers kept changing objects pass after pass (a controller that never converges)."""


class ControllerManager:
    """kube-controller-manager and kube-scheduler over one store."""

    def __init__(self, store: Store, clock: Clock = real_clock, cluster: karpenter.Cluster | None = None,
                 tick: float = 1.0) -> None:
        self.store, self.tick = store, tick
        self.ctx = Context(store, clock)
        self.scheduler = SchedulingLoop(self.ctx, cluster)
        self.jobs = JobController(self.ctx)
        self.deployments = DeploymentController(self.ctx)
        self.replicasets = ReplicaSetController(self.ctx)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> bool:
        """Run one pass of every controller; return whether it changed anything."""
        with self.store.lock:
            before = self.store.version
            collect_garbage(self.ctx)
            self.deployments.sync_all()
            self.replicasets.sync_all()
            self.jobs.sync_all()
            self.scheduler.sync_all()
            sync_endpoints(self.ctx)
            sync_disruption_budgets(self.ctx)
            return self.store.version != before

    def settle(self, passes: int = 100) -> None:
        """Run passes until one changes nothing."""
        for _ in range(passes):
            if not self.sync():
                return
        raise NotSettled(f"controllers still changing objects after {passes} passes: "
                         f"{[(c[1], c[2], c[3]['metadata']['name']) for c in self.store.changes[-5:]]}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="twin-controllers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a controller error it met is raised here, so the test that caused it fails."""
        self._stop.set()
        with self.store.lock:
            self.store.lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self.errors:
            raise self.errors[0]

    def _run(self) -> None:
        seen = -1
        while not self._stop.is_set():
            with self.store.lock:
                if self.store.version == seen:
                    self.store.lock.wait(self.tick)
                if self._stop.is_set():
                    return
            try:
                self.sync()
            except Exception as exc:  # recorded and raised by stop(); the loop carries on like the real one
                log.exception("controller pass failed")
                self.errors.append(exc)
            seen = self.store.version

    def __enter__(self) -> ControllerManager:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# -- scheduling ---------------------------------------------------------------------------------------------

class SchedulingLoop:
    """kube-scheduler's loop over the twin's ``scheduler.place``, then Karpenter for the pods left Pending."""

    component = "default-scheduler"

    def __init__(self, ctx: Context, cluster: karpenter.Cluster | None) -> None:
        self.ctx, self.cluster = ctx, cluster
        self.karpenter_said: dict[str, str] = {}  # pod uid -> Karpenter's last message

    def sync_all(self) -> None:
        pending = [p for p in self.ctx.items("pods") if not p["spec"].get("nodeName") and not deleting(p)
                   and phase(p) not in TERMINAL
                   and p["spec"].get("schedulerName", "default-scheduler") == "default-scheduler"]
        pending.sort(key=lambda p: (-int(p["spec"].get("priority", 0)), p["metadata"].get("creationTimestamp", ""),
                                    p["metadata"]["name"]))
        left = [pod for pod in pending if not self.schedule(pod)]
        pools = self.ctx.items("nodepools")
        if not left or not pools:
            return
        from tests.twin import karpenter  # only a cluster with NodePools needs the provisioner
        base = self.cluster or karpenter.Cluster()
        # A new node runs the DaemonSets stored now too (a device plugin applied with kubectl advertises its GPUs).
        running = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
                   for d in [*base.daemonsets, *self.ctx.items("daemonsets")]}
        cluster = dataclasses.replace(base, daemonsets=list(running.values()))
        for launch, pod in zip(karpenter.provision(left, pools, self.ctx.items("nodes"), cluster), left,
                               strict=True):
            if launch.node is not None and self.ctx.store.get("nodes", "", launch.node["metadata"]["name"]) is None:
                self.ctx.store.put("nodes", copy.deepcopy(launch.node))
            elif launch.node is None and self.karpenter_said.get(pod["metadata"]["uid"]) != launch.message:
                self.karpenter_said[pod["metadata"]["uid"]] = launch.message
                self.ctx.event(pod, "Warning", "FailedScheduling", launch.message, "karpenter")
        for pod in left:
            self.schedule(self.ctx.store.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"]) or pod)

    def _pods_on_nodes(self) -> dict[str, list[Obj]]:
        found: dict[str, list[Obj]] = {}
        for pod in self.ctx.items("pods"):
            if pod["spec"].get("nodeName"):
                found.setdefault(pod["spec"]["nodeName"], []).append(pod)
        return found

    def schedule(self, pod: Obj) -> bool:
        """Bind the pod, or record PodScheduled=False and FailedScheduling; return whether it was bound."""
        if pod["spec"].get("nodeName"):
            return True
        placement = place(pod, self.ctx.items("nodes"), self._pods_on_nodes())
        bound = copy.deepcopy(pod)
        status = bound.setdefault("status", {})
        status.setdefault("phase", "Pending")
        conditions = [c for c in status.get("conditions", []) if c.get("type") != "PodScheduled"]
        current = next((c for c in status.get("conditions", []) if c.get("type") == "PodScheduled"), None)
        if placement.node is not None:
            bound["spec"]["nodeName"] = placement.node
            status["conditions"] = [*conditions, {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                                  "lastTransitionTime": self.ctx.now()}]
            self.ctx.write("pods", bound)
            self.ctx.event(bound, "Normal", "Scheduled", placement.message, self.component, action="Binding")
            return True
        if current is not None and current.get("message") == placement.message:
            return False
        refusal = unschedulable_condition(placement.message, self.ctx.clock())
        status["conditions"] = [*conditions, refusal.condition]
        self.ctx.write("pods", bound)
        extra = {k: v for k, v in refusal.event.items()
                 if k not in ("type", "reason", "message", "source", "reportingComponent")}
        self.ctx.event(bound, refusal.event["type"], refusal.event["reason"], refusal.event["message"],
                       self.component, **extra)
        return False


# -- garbage collection -------------------------------------------------------------------------------------

def _plural(ref: Obj) -> str | None:
    res = BY_KIND.get((ref.get("apiVersion", ""), ref.get("kind", "")))
    return res.plural if res is not None else None


def _owner(ctx: Context, obj: Obj, ref: Obj) -> Obj | bool | None:
    """Return the live owner, None if it is gone, or True when the twin cannot tell (an unmodelled kind)."""
    plural = _plural(ref)
    if plural is None:
        return True
    namespace = obj["metadata"].get("namespace", "") if RESOURCES[plural].namespaced else ""
    owner = ctx.store.get(plural, namespace, ref["name"])
    return owner if owner is not None and owner["metadata"].get("uid") == ref.get("uid") else None


def collect_garbage(ctx: Context) -> None:
    """The garbage collector: dependents of deleted owners go (or, for orphan deletion, lose the reference);
    an owner held by foregroundDeletion goes once its dependents have; finalizer-free deleted objects go."""
    with ctx.store.lock:
        everything = [(p, o) for (p, _, _), o in sorted(ctx.store.objects.items())]
    for plural, obj in everything:
        current = ctx.store.get(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if current is None:
            continue
        if deleting(current):
            _finish_deletion(ctx, plural, current)
            continue
        refs = current["metadata"].get("ownerReferences") or []
        owners = [(ref, _owner(ctx, current, ref)) for ref in refs]
        orphaned = [ref for ref, owner in owners if isinstance(owner, dict) and deleting(owner)
                    and "orphan" in (owner["metadata"].get("finalizers") or [])]
        if orphaned:
            changed = copy.deepcopy(current)
            changed["metadata"]["ownerReferences"] = [r for r in refs if r not in orphaned]
            ctx.write(plural, changed)
            continue
        live = [owner for _, owner in owners if owner is True or (isinstance(owner, dict) and not (
            deleting(owner) and "foregroundDeletion" in (owner["metadata"].get("finalizers") or [])))]
        if refs and not live:
            ctx.delete(plural, current)


def _dependents(ctx: Context, owner: Obj) -> list[tuple[str, Obj]]:
    uid = owner["metadata"]["uid"]
    with ctx.store.lock:
        return [(p, o) for (p, _, _), o in sorted(ctx.store.objects.items())
                if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]


def _finish_deletion(ctx: Context, plural: str, obj: Obj) -> None:
    finalizers = obj["metadata"].get("finalizers") or []
    if "foregroundDeletion" in finalizers and not _dependents(ctx, obj):
        ctx.drop_finalizer(plural, obj, "foregroundDeletion")
    elif "orphan" in finalizers and not _dependents(ctx, obj):
        ctx.drop_finalizer(plural, obj, "orphan")
    elif not finalizers and (plural != "pods" or not obj["spec"].get("nodeName")):
        ctx.store.remove(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], cascade=False)


# -- endpoints ----------------------------------------------------------------------------------------------

def _target_port(service_port: Obj, pod: Obj) -> int | None:
    """Resolve a Service port's targetPort (a number, or a container port's name) on one pod."""
    target: int | str = service_port.get("targetPort") or service_port["port"]
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    protocol = service_port.get("protocol", "TCP")
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def _address(pod: Obj, service: str) -> Obj:
    meta = pod["metadata"]
    address: Obj = {"ip": pod["status"]["podIP"]}
    if pod["spec"].get("hostname") and pod["spec"].get("subdomain") == service:
        address["hostname"] = pod["spec"]["hostname"]
    if pod["spec"].get("nodeName"):
        address["nodeName"] = pod["spec"]["nodeName"]
    address["targetRef"] = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}
    return address


def endpoint_subsets(service: Obj, pods: list[Obj]) -> list[Obj]:
    """The Endpoints controller's subsets: ready pods under addresses, the rest under notReadyAddresses, grouped
    by the ports each pod resolves (RepackSubsets)."""
    spec = service["spec"]
    publish = bool(spec.get("publishNotReadyAddresses"))
    groups: dict[tuple[tuple[str, int, str], ...], dict[str, list[Obj]]] = {}
    for pod in pods:
        if not (pod.get("status") or {}).get("podIP") or phase(pod) in TERMINAL or (deleting(pod) and not publish):
            continue
        ports: list[tuple[str, int, str]] = []
        for sp in spec.get("ports", []):
            number = _target_port(sp, pod)
            if number is not None:
                ports.append((sp.get("name", ""), number, sp.get("protocol", "TCP")))
        if not ports and (spec.get("ports") or spec.get("clusterIP") != "None"):
            continue
        subset: dict[str, list[Obj]] = groups.setdefault(tuple(sorted(ports)),
                                                         {"addresses": [], "notReadyAddresses": []})
        subset["addresses" if publish or ready(pod) else "notReadyAddresses"].append(_address(pod, service[
            "metadata"]["name"]))
    subsets = []
    for key, subset in sorted(groups.items()):
        entry: Obj = {k: sorted(v, key=lambda a: a["ip"]) for k, v in subset.items() if v}
        if key:
            entry["ports"] = [{**({"name": n} if n else {}), "port": p, "protocol": proto} for n, p, proto in key]
        subsets.append(entry)
    return subsets


def sync_endpoints(ctx: Context) -> None:
    """Keep a v1 Endpoints per Service with a selector; delete it with its Service."""
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in ctx.items("services")}
    for (namespace, name), svc in services.items():
        selector = svc["spec"].get("selector")
        if not selector or svc["spec"].get("type") == "ExternalName":
            continue
        pods = [p for p in ctx.items("pods", namespace)
                if selector_matches({"matchLabels": selector}, p["metadata"].get("labels") or {})]
        existing = ctx.store.get("endpoints", namespace, name)
        endpoints: Obj = copy.deepcopy(existing) if existing else {
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": namespace}}
        endpoints["metadata"]["labels"] = dict(svc["metadata"].get("labels") or {})
        if not endpoints["metadata"]["labels"]:
            endpoints["metadata"].pop("labels")
        subsets = endpoint_subsets(svc, pods)
        endpoints.pop("subsets", None)
        if subsets:
            endpoints["subsets"] = subsets
        if ctx.write("endpoints", endpoints):
            ctx.managed_endpoints.add((namespace, name))
    for namespace, name in sorted(ctx.managed_endpoints - set(services)):
        ctx.managed_endpoints.discard((namespace, name))
        ctx.store.remove("endpoints", namespace, name, cascade=False)


# -- pod disruption budgets ---------------------------------------------------------------------------------

def _expected(ctx: Context, pods: list[Obj]) -> int:
    """getExpectedPodCount: the scale of the controllers owning the pods (a Deployment for its ReplicaSets)."""
    scales: dict[str, int] = {}
    loose = 0
    for pod in pods:
        ref = controller_of(pod)
        owner = _owner(ctx, pod, ref) if ref else None
        if isinstance(owner, dict) and owner["kind"] == "ReplicaSet":
            parent_ref = controller_of(owner)
            parent = _owner(ctx, owner, parent_ref) if parent_ref else None
            owner = parent if isinstance(parent, dict) and parent["kind"] == "Deployment" else owner
        if isinstance(owner, dict) and "replicas" in owner.get("spec", {}):
            scales[owner["metadata"]["uid"]] = int(owner["spec"]["replicas"])
        else:
            loose += 1
    return sum(scales.values()) + loose


def sync_disruption_budgets(ctx: Context) -> None:
    """The disruption controller's status: currentHealthy, desiredHealthy, disruptionsAllowed, expectedPods."""
    for pdb in ctx.items("poddisruptionbudgets"):
        spec = pdb["spec"]
        pods = [p for p in ctx.items("pods", pdb["metadata"]["namespace"])
                if selector_matches(spec.get("selector"), p["metadata"].get("labels") or {})]
        healthy = len([p for p in pods if ready(p) and not deleting(p) and phase(p) not in TERMINAL])
        if isinstance(spec.get("minAvailable"), int):
            expected, desired = len(pods), int(spec["minAvailable"])
        elif "minAvailable" in spec:
            expected = _expected(ctx, pods)
            desired = scaled(spec["minAvailable"], expected, True)
        else:
            expected = _expected(ctx, pods)
            desired = max(0, expected - scaled(spec.get("maxUnavailable", 0), expected, True))
        allowed = max(0, healthy - desired)
        changed = copy.deepcopy(pdb)
        status: dict[str, Any] = changed.setdefault("status", {})
        generation = pdb["metadata"].get("generation", 1)
        status.update(currentHealthy=healthy, desiredHealthy=desired, disruptionsAllowed=allowed,
                      expectedPods=expected, observedGeneration=generation)
        reason = "SufficientPods" if allowed else "InsufficientPods"
        status["conditions"] = set_condition(status.get("conditions", []), "DisruptionAllowed",
                                             "True" if allowed else "False", reason, "", ctx.now(),
                                             observedGeneration=generation)
        ctx.write("poddisruptionbudgets", changed)
