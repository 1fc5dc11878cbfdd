"""What the twin's controllers share: the clock, writes through the store, events, pod creation and deletion.

Controllers read and write only through the store, as kube-controller-manager's controllers go through the API:

    Context(store, clock)                    one per controller manager; ``clock()`` is an aware UTC datetime
    ManualClock(start).advance(seconds)      an injected clock for deadlines, backoffs and minReadySeconds
    ctx.write(plural, obj) -> bool           store the object only if it differs from what is stored
    ctx.event(obj, type, reason, message, component)   a core/v1 Event, aggregated (count) like the recorder's
    ctx.create_pod(owner, pod, component) -> dict | None   the API create: admission refusals become a
                                             ``FailedCreate`` Warning on the owner and None
    ctx.delete(plural, obj)                  the API delete: a running pod gets deletionTimestamp (the kubelet
                                             ends it), finalizers hold an object, anything else goes at once
"""

from __future__ import annotations

import copy
import datetime
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.twin.resources import RESOURCES
from tests.twin.store import Store, StoreError

Clock = Callable[[], datetime.datetime]
Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
_IGNORED_META = ("resourceVersion", "managedFields")


def real_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ManualClock:
    """A clock that moves only when told to (tests drive deadlines with it)."""

    def __init__(self, start: datetime.datetime | None = None) -> None:
        self.now = (start or real_clock()).replace(microsecond=0)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


def stamp(moment: datetime.datetime) -> str:
    """Return the API's RFC 3339 spelling of a time (seconds, UTC)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def scaled(value: int | str | None, total: int, round_up: bool, default: int | str = 0) -> int:
    """Resolve an IntOrString (``3`` or ``"25%"``) against ``total`` as intstr.GetScaledValueFromIntOrPercent."""
    value = default if value is None else value
    if isinstance(value, int):
        return value
    if value.endswith("%"):
        share = int(value[:-1]) * total / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


def condition(obj: Obj, kind: str) -> Obj | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def has_true(obj: Obj, kind: str) -> bool:
    found = condition(obj, kind)
    return found is not None and found.get("status") == "True"


def phase(pod: Obj) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def deleting(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def active(pod: Obj) -> bool:
    """controller.IsPodActive: not finished and not being deleted."""
    return phase(pod) not in TERMINAL and not deleting(pod)


def terminating(pod: Obj) -> bool:
    return phase(pod) not in TERMINAL and deleting(pod)


def ready(pod: Obj) -> bool:
    return has_true(pod, "Ready")


def available(pod: Obj, min_ready_seconds: int, now: datetime.datetime) -> bool:
    """podutil.IsPodAvailable: Ready, and for at least minReadySeconds."""
    if not ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((condition(pod, "Ready") or {}).get("lastTransitionTime"))
    return since is not None and since + datetime.timedelta(seconds=min_ready_seconds) <= now


def controller_of(obj: Obj) -> Obj | None:
    return next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


def owner_reference(owner: Obj) -> Obj:
    """metav1.NewControllerRef: the reference a controller puts on what it creates."""
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def same(a: Obj, b: Obj) -> bool:
    """Compare two objects as a controller's no-op check does (resourceVersion aside)."""
    def strip(obj: Obj) -> Obj:
        meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in _IGNORED_META}
        return {**obj, "metadata": meta}
    return strip(a) == strip(b)


@dataclass
class Backoff:
    """Per-key exponential backoff of failed API writes (the work queue's rate limiter): 1 s doubling to 60 s."""

    base: float = 1.0
    cap: float = 60.0
    failures: dict[str, tuple[int, datetime.datetime]] = field(default_factory=dict)

    def ready(self, key: str, now: datetime.datetime) -> bool:
        if key not in self.failures:
            return True
        count, at = self.failures[key]
        return now >= at + datetime.timedelta(seconds=min(self.base * 2 ** (count - 1), self.cap))

    def failed(self, key: str, now: datetime.datetime) -> None:
        self.failures[key] = (self.failures.get(key, (0, now))[0] + 1, now)

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)


class Context:
    """The store and the clock, with the writes every controller makes."""

    def __init__(self, store: Store, clock: Clock = real_clock) -> None:
        self.store, self.clock = store, clock
        self.backoff = Backoff()
        self.managed_endpoints: set[tuple[str, str]] = set()
        self._events = 0

    def now(self) -> str:
        return stamp(self.clock())

    def items(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """Return the stored objects of a kind (the dicts themselves: copy before changing), in name order."""
        with self.store.lock:
            return [o for (p, ns, _), o in sorted(self.store.objects.items())
                    if p == plural and (namespace is None or ns == namespace)]

    def owned(self, plural: str, owner: Obj) -> list[Obj]:
        """Return the objects whose controller reference is ``owner`` (what its controller manages)."""
        uid = owner["metadata"]["uid"]
        return [o for o in self.items(plural, owner["metadata"].get("namespace", ""))
                if (controller_of(o) or {}).get("uid") == uid]

    def write(self, plural: str, obj: Obj) -> bool:
        """Store ``obj`` unless it equals what is stored; return whether it changed anything."""
        meta = obj["metadata"]
        with self.store.lock:
            current = self.store.get(plural, meta.get("namespace", ""), meta["name"])
            if current is not None and same(current, obj):
                return False
            self.store.put(plural, obj)
            return True

    def event(self, obj: Obj, kind: str, reason: str, message: str, component: str, **extra: Any) -> None:
        """Record a core/v1 Event on ``obj``; a repeat of the same one counts up, as the event correlator does."""
        meta, now = obj["metadata"], self.now()
        namespace = meta.get("namespace", "default")
        involved = {"kind": obj.get("kind"), "namespace": namespace, "name": meta["name"], "uid": meta.get("uid"),
                    "apiVersion": obj.get("apiVersion"), "resourceVersion": meta.get("resourceVersion")}
        with self.store.lock:
            for existing in self.items("events", namespace):
                if (existing.get("involvedObject", {}).get("uid") == meta.get("uid")
                        and (existing["reason"], existing["message"], existing["type"]) == (reason, message, kind)
                        and existing.get("source", {}).get("component") == component):
                    again = copy.deepcopy(existing)
                    again.update(count=int(existing.get("count", 1)) + 1, lastTimestamp=now)
                    self.store.put("events", again)
                    return
            self._events += 1
            name = f"{meta['name']}.{int(self.clock().timestamp() * 1e9) + self._events:x}"
            self.store.put("events", {
                "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": namespace},
                "involvedObject": involved, "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now, "eventTime": None, "source": {"component": component},
                "reportingComponent": component, "reportingInstance": "", **extra})

    def create_pod(self, owner: Obj, pod: Obj, component: str) -> tuple[Obj | None, str]:
        """Create a pod for ``owner`` through admission; a refusal is a FailedCreate Warning on the owner.

        Returns (the stored pod, "") or (None, the API server's message); the owner's next try waits out its
        backoff (``may_create``), as the work queue's rate limiter makes it.
        """
        key = f"{owner['kind']}/{owner['metadata'].get('namespace')}/{owner['metadata']['name']}"
        try:
            created = self.store.create("pods", pod)
        except StoreError as exc:  # Forbidden by admission, or any other refusal: the controller retries
            self.backoff.failed(key, self.clock())
            self.event(owner, "Warning", "FailedCreate", f"Error creating: {exc.message}", component)
            return None, exc.message
        self.backoff.succeeded(key)
        self.event(owner, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", component)
        return created, ""

    def may_create(self, owner: Obj) -> bool:
        key = f"{owner['kind']}/{owner['metadata'].get('namespace')}/{owner['metadata']['name']}"
        return self.backoff.ready(key, self.clock())

    def delete(self, plural: str, obj: Obj, propagation: str = "Background") -> None:
        """Delete as a DELETE request does: graceful for a pod on a node, held by finalizers, else at once."""
        meta = obj["metadata"]
        namespace = meta.get("namespace", "") if RESOURCES[plural].namespaced else ""
        with self.store.lock:
            current = self.store.get(plural, namespace, meta["name"])
            if current is None or deleting(current):
                return
            graceful = plural == "pods" and current["spec"].get("nodeName") and phase(current) not in TERMINAL
            finalizers = list(current["metadata"].get("finalizers") or [])
            if propagation in ("Foreground", "Orphan") and plural != "pods":
                finalizers.append("foregroundDeletion" if propagation == "Foreground" else "orphan")
            if not graceful and not finalizers:
                self.store.remove(plural, namespace, meta["name"], cascade=False)  # the GC takes dependents
                return
            marked = copy.deepcopy(current)
            grace = int(current["spec"].get("terminationGracePeriodSeconds", 30)) if graceful else 0
            marked["metadata"].update(deletionTimestamp=stamp(self.clock() + datetime.timedelta(seconds=grace)),
                                      deletionGracePeriodSeconds=grace, finalizers=finalizers)
            self.store.put(plural, marked)

    def drop_finalizer(self, plural: str, obj: Obj, finalizer: str) -> None:
        """Remove one finalizer; an object being deleted with none left goes, as the API server does."""
        with self.store.lock:
            current = self.store.get(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            if current is None or finalizer not in (current["metadata"].get("finalizers") or []):
                return
            changed = copy.deepcopy(current)
            changed["metadata"]["finalizers"] = [f for f in changed["metadata"]["finalizers"] if f != finalizer]
            if not changed["metadata"]["finalizers"]:
                changed["metadata"].pop("finalizers")
            gone = deleting(changed) and not changed["metadata"].get("finalizers") and (
                plural != "pods" or phase(changed) in TERMINAL or not changed["spec"].get("nodeName"))
            if gone:
                self.store.remove(plural, changed["metadata"].get("namespace", ""), changed["metadata"]["name"])
            else:
                self.store.put(plural, changed)


def set_condition(conditions: list[Obj], kind: str, status: str, reason: str, message: str, now: str,
                  **extra: Any) -> list[Obj]:
    """Return conditions with one set; unchanged when equal, lastTransitionTime kept while the status holds."""
    old = next((c for c in conditions if c.get("type") == kind), None)
    if old is not None and (old.get("status"), old.get("reason"), old.get("message")) == (status, reason, message):
        if all(old.get(k) == v for k, v in extra.items()):
            return conditions
    new: Obj = {"type": kind, "status": status, **extra, "reason": reason, "message": message,
                "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status else now}
    if old is None:
        return [*conditions, new]
    return [new if c is old else c for c in conditions]


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Evaluate a metav1.LabelSelector (matchLabels and matchExpressions); an empty selector selects all."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for term in selector.get("matchExpressions") or []:
        key, op, values = term["key"], term["operator"], term.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def by_name(objs: list[Obj]) -> Iterator[Obj]:
    yield from sorted(objs, key=lambda o: o["metadata"]["name"])


_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def removal_order(pods: list[Obj]) -> list[Obj]:
    """Sort pods as controller.ActivePods does: the ones to delete first (unscheduled, pending, not ready,
    ready for less time, restarted more, newer)."""
    def key(pod: Obj) -> tuple[Any, ...]:
        since = (condition(pod, "Ready") or {}).get("lastTransitionTime") or ""
        restarts = sum(int(c.get("restartCount", 0)) for c in (pod.get("status") or {}).get("containerStatuses", []))
        created = pod["metadata"].get("creationTimestamp") or ""
        return (bool(pod["spec"].get("nodeName")), _PHASE_RANK.get(phase(pod), 3), ready(pod),
                _desc(since) if ready(pod) else "", -restarts, _desc(created), _desc(pod["metadata"]["name"]))
    return sorted(pods, key=key)


def _desc(text: str) -> tuple[int, ...]:
    """A key that sorts strings newest (largest) first."""
    return tuple(-ord(ch) for ch in text)
