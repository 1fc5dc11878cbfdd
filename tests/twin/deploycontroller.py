"""The Deployment and ReplicaSet controllers as kube-controller-manager runs them (pkg/controller/deployment,
pkg/controller/replicaset).

Deployment: a ReplicaSet per pod template named ``<deployment>-<pod-template-hash>``, the revision annotations,
RollingUpdate by maxSurge (rounded up) and maxUnavailable (rounded down; both zero means one), Recreate, status
(observedGeneration, replicas, updatedReplicas, readyReplicas, availableReplicas, unavailableReplicas) and the
Available / Progressing / ReplicaFailure conditions with progressDeadlineSeconds, revisionHistoryLimit.
ReplicaSet: pods through admission (FailedCreate events and the ReplicaFailure condition), surplus pods removed
in controller.ActivePods order, availability by readiness held for minReadySeconds. Not modelled: paused
rollouts, proportional scaling of a resized Deployment mid-rollout, hash collisions.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.twin.controlkit import (
    Context,
    Obj,
    active,
    available,
    condition,
    deleting,
    owner_reference,
    parse_time,
    ready,
    removal_order,
    scaled,
    set_condition,
)

HASH = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX = "deployment.kubernetes.io/max-replicas"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand's alphabet
_SLOW_START = 500


def template_hash(template: Obj, collisions: int = 0) -> str:
    """ComputeHash: FNV-32a over the pod template (and the collision count), safe-encoded."""
    digest = 0x811C9DC5
    data = json.dumps(template, sort_keys=True).encode() + (str(collisions).encode() if collisions else b"")
    for byte in data:
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE[ord(ch) % len(_SAFE)] for ch in str(digest))


def _without_hash(template: Obj) -> Obj:
    bare = copy.deepcopy(template)
    (bare.get("metadata") or {}).get("labels", {}).pop(HASH, None)
    return bare


def _replicas(obj: Obj) -> int:
    return int(obj["spec"].get("replicas", 1))


def _revision(rs: Obj) -> int:
    text = (rs["metadata"].get("annotations") or {}).get(REVISION, "0")
    return int(text) if text.isdigit() else 0


def _stat(rs: Obj, key: str) -> int:
    return int((rs.get("status") or {}).get(key, 0))


class ReplicaSetController:
    """Keeps ``spec.replicas`` pods of each ReplicaSet's template."""

    component = "replicaset-controller"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def sync_all(self) -> None:
        for rs in self.ctx.items("replicasets"):
            self.sync(rs)

    def sync(self, stored: Obj) -> None:
        if deleting(stored):
            return
        rs = copy.deepcopy(stored)
        pods = [p for p in self.ctx.owned("pods", rs) if active(p)]
        want, error = _replicas(rs), None
        if len(pods) < want and self.ctx.may_create(rs):
            error = self._create(rs, want - len(pods))
        elif len(pods) > want:
            for pod in removal_order(pods)[:len(pods) - want]:
                self.ctx.delete("pods", pod)
                self.ctx.event(rs, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}",
                               self.component)
        self._status(rs, error)
        self.ctx.write("replicasets", rs)

    def _create(self, rs: Obj, count: int) -> str | None:
        """Create pods in slow-start batches (1, 2, 4, ...); the first refusal stops the sync."""
        batch, made = 1, 0
        while made < min(count, _SLOW_START):
            for _ in range(min(batch, count - made)):
                pod = copy.deepcopy(rs["spec"]["template"])
                meta = pod.setdefault("metadata", {})
                meta.update(namespace=rs["metadata"]["namespace"], generateName=f"{rs['metadata']['name']}-",
                            ownerReferences=[owner_reference(rs)])
                created, error = self.ctx.create_pod(rs, pod, self.component)
                if created is None:
                    return error
                made += 1
            batch *= 2
        return None

    def _status(self, rs: Obj, error: str | None) -> None:
        now, min_ready = self.ctx.clock(), int(rs["spec"].get("minReadySeconds", 0))
        pods = [p for p in self.ctx.owned("pods", rs) if active(p)]
        labels = (rs["spec"]["template"].get("metadata") or {}).get("labels") or {}
        status = rs.setdefault("status", {})
        status.update(replicas=len(pods), observedGeneration=rs["metadata"].get("generation", 1),
                      fullyLabeledReplicas=len([p for p in pods if labels.items() <= (
                          p["metadata"].get("labels") or {}).items()]),
                      readyReplicas=len([p for p in pods if ready(p)]),
                      availableReplicas=len([p for p in pods if available(p, min_ready, now)]))
        for key in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"):
            if not status[key]:
                status.pop(key)
        conditions = status.get("conditions", [])
        if error is not None:
            status["conditions"] = set_condition(conditions, "ReplicaFailure", "True", "FailedCreate", error,
                                                 self.ctx.now())
        elif condition(rs, "ReplicaFailure") is not None and self.ctx.may_create(rs):
            status["conditions"] = [c for c in conditions if c["type"] != "ReplicaFailure"]
        if not status.get("conditions"):
            status.pop("conditions", None)


class DeploymentController:
    """Rolls each Deployment's ReplicaSets toward its template and reports the rollout."""

    component = "deployment-controller"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def sync_all(self) -> None:
        for deployment in self.ctx.items("deployments"):
            self.sync(deployment)

    def sync(self, stored: Obj) -> None:
        if deleting(stored):
            return
        d = copy.deepcopy(stored)
        sets = sorted(self.ctx.owned("replicasets", d), key=lambda r: (_revision(r), r["metadata"]["name"]))
        new = next((r for r in sets if _without_hash(r["spec"]["template"]) == d["spec"]["template"]), None)
        olds = [r for r in sets if r is not new]
        created = new is None
        new = self._new_set(d, new, olds)
        strategy = (d["spec"].get("strategy") or {}).get("type", "RollingUpdate")
        if strategy == "Recreate":
            self._recreate(d, new, olds)
        else:
            self._roll(d, new, olds)
        sets = [self.ctx.store.get("replicasets", d["metadata"]["namespace"], r["metadata"]["name"]) or r
                for r in [*olds, new]]
        self._status(d, sets[-1], sets[:-1], created)
        if self.ctx.write("deployments", d) and _complete(d):
            self._clean(d, sets[:-1])

    # -- the new ReplicaSet ----------------------------------------------------------------------------------

    def _new_set(self, d: Obj, new: Obj | None, olds: list[Obj]) -> Obj:
        """Find or create the ReplicaSet of the current template; it carries the highest revision."""
        revision = str(max((_revision(r) for r in olds), default=0) + 1)
        if new is not None:
            unnumbered = not (new["metadata"].get("annotations") or {}).get(REVISION)
            if (_revision(new) < int(revision) and olds) or unnumbered:
                changed = copy.deepcopy(new)
                changed["metadata"].setdefault("annotations", {})[REVISION] = revision
                self.ctx.write("replicasets", changed)
                new = changed
        else:
            digest = template_hash(d["spec"]["template"], int((d.get("status") or {}).get("collisionCount", 0)))
            template = copy.deepcopy(d["spec"]["template"])
            template.setdefault("metadata", {}).setdefault("labels", {})[HASH] = digest
            selector = copy.deepcopy(d["spec"]["selector"])
            selector.setdefault("matchLabels", {})[HASH] = digest
            replicas = self._first_scale(d, olds)
            new = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
                "name": f"{d['metadata']['name']}-{digest}", "namespace": d["metadata"]["namespace"],
                "labels": dict(template["metadata"]["labels"]), "ownerReferences": [owner_reference(d)],
                "annotations": self._annotations(d, revision)},
                "spec": {"replicas": replicas, "minReadySeconds": int(d["spec"].get("minReadySeconds", 0)),
                         "selector": selector, "template": template}}
            new = copy.deepcopy(self.ctx.store.put("replicasets", new))
            if replicas:
                self._scaled_event(d, new["metadata"]["name"], 0, replicas)
        annotations = d["metadata"].setdefault("annotations", {})
        annotations[REVISION] = (new["metadata"].get("annotations") or {}).get(REVISION, revision)
        return new

    def _annotations(self, d: Obj, revision: str) -> dict[str, str]:
        surge, _ = self._fenceposts(d)
        return {REVISION: revision, DESIRED: str(_replicas(d)), MAX: str(_replicas(d) + surge)}

    def _first_scale(self, d: Obj, olds: list[Obj]) -> int:
        strategy = (d["spec"].get("strategy") or {}).get("type", "RollingUpdate")
        if strategy == "Recreate":
            return 0
        return self._scale_up_to(d, 0, olds)

    def _fenceposts(self, d: Obj) -> tuple[int, int]:
        """ResolveFenceposts: (maxSurge rounded up, maxUnavailable rounded down); both zero gives (0, 1)."""
        rolling = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        desired = _replicas(d)
        if (d["spec"].get("strategy") or {}).get("type", "RollingUpdate") != "RollingUpdate":
            return 0, 0
        surge = scaled(rolling.get("maxSurge"), desired, True, "25%")
        unavailable = scaled(rolling.get("maxUnavailable"), desired, False, "25%")
        return (surge, 1) if surge == 0 and unavailable == 0 else (surge, unavailable)

    def _scale_up_to(self, d: Obj, current_new: int, olds: list[Obj]) -> int:
        """NewRSNewReplicas: grow the new set while all sets together stay within replicas + maxSurge."""
        desired = _replicas(d)
        surge, _ = self._fenceposts(d)
        total = current_new + sum(_replicas(r) for r in olds)
        room = desired + surge - total
        return current_new + max(0, min(room, desired - current_new))

    # -- strategies ------------------------------------------------------------------------------------------

    def _roll(self, d: Obj, new: Obj, olds: list[Obj]) -> None:
        desired = _replicas(d)
        if _replicas(new) > desired:
            self._scale(d, new, desired)
        elif _replicas(new) < desired:
            self._scale(d, new, self._scale_up_to(d, _replicas(new), olds))
        olds = [r for r in olds if _replicas(r) > 0]
        if not olds:
            return
        _, unavailable = self._fenceposts(d)
        minimum = desired - unavailable
        everything = [*olds, new]
        new_unavailable = _replicas(new) - _stat(new, "availableReplicas")
        allowed = sum(_replicas(r) for r in everything) - minimum - new_unavailable
        if allowed <= 0:
            return
        for rs in olds:  # cleanupUnhealthyReplicas: old pods that are not available go first
            unhealthy = _replicas(rs) - _stat(rs, "availableReplicas")
            cut = min(allowed, unhealthy)
            if cut > 0:
                self._scale(d, rs, _replicas(rs) - cut)
                allowed -= cut
        olds = [self.ctx.store.get("replicasets", r["metadata"]["namespace"], r["metadata"]["name"]) or r
                for r in olds]
        spare = sum(_stat(r, "availableReplicas") for r in [*olds, new]) - minimum
        for rs in olds:  # scaleDownOldReplicaSetsForRollingUpdate, oldest first
            cut = min(_replicas(rs), spare, allowed)
            if cut > 0:
                self._scale(d, rs, _replicas(rs) - cut)
                spare -= cut
                allowed -= cut

    def _recreate(self, d: Obj, new: Obj, olds: list[Obj]) -> None:
        for rs in olds:
            if _replicas(rs) > 0:
                self._scale(d, rs, 0)
        if any(active(p) for rs in olds for p in self.ctx.owned("pods", rs)):
            return
        if _replicas(new) != _replicas(d):
            self._scale(d, new, _replicas(d))

    def _scale(self, d: Obj, rs: Obj, replicas: int) -> None:
        current = self.ctx.store.get("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"])
        if current is None:
            return
        changed = copy.deepcopy(current)
        before = _replicas(changed)
        changed["spec"]["replicas"] = replicas
        revision = (changed["metadata"].get("annotations") or {}).get(REVISION, "")
        changed["metadata"].setdefault("annotations", {}).update(self._annotations(d, revision))
        if self.ctx.write("replicasets", changed) and before != replicas:
            self._scaled_event(d, changed["metadata"]["name"], before, replicas)

    def _scaled_event(self, d: Obj, name: str, before: int, after: int) -> None:
        way = "up" if after > before else "down"
        self.ctx.event(d, "Normal", "ScalingReplicaSet", f"Scaled {way} replica set {name} from {before} to {after}",
                       self.component)

    # -- status ----------------------------------------------------------------------------------------------

    def _status(self, d: Obj, new: Obj, olds: list[Obj], created: bool) -> None:
        old = copy.deepcopy(d.get("status") or {})
        everything = [*olds, new]
        desired = _replicas(d)
        counts = {"replicas": sum(_stat(r, "replicas") for r in everything),
                  "updatedReplicas": _stat(new, "replicas"),
                  "readyReplicas": sum(_stat(r, "readyReplicas") for r in everything),
                  "availableReplicas": sum(_stat(r, "availableReplicas") for r in everything)}
        counts["unavailableReplicas"] = max(0, desired - counts["availableReplicas"])
        status: dict[str, Any] = {"observedGeneration": d["metadata"].get("generation", 1),
                                  **{k: v for k, v in counts.items() if v}}
        if "collisionCount" in old:
            status["collisionCount"] = old["collisionCount"]
        now, conditions = self.ctx.now(), list(old.get("conditions") or [])
        _, unavailable = self._fenceposts(d)
        if counts["availableReplicas"] >= desired - unavailable:
            conditions = set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                                       "Deployment has minimum availability.", now, lastUpdateTime=now)
        else:
            conditions = set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                                       "Deployment does not have minimum availability.", now, lastUpdateTime=now)
        conditions = self._progress(d, new, old, status, counts, conditions, created)
        failure = next((condition(r, "ReplicaFailure") for r in everything if condition(r, "ReplicaFailure")), None)
        if failure is not None:
            conditions = set_condition(conditions, "ReplicaFailure", "True", failure["reason"], failure["message"],
                                       now, lastUpdateTime=now)
        else:
            conditions = [c for c in conditions if c["type"] != "ReplicaFailure"]
        status["conditions"] = _keep_update_times(old.get("conditions") or [], conditions)
        d["status"] = status

    def _progress(self, d: Obj, new: Obj, old: Obj, status: Obj, counts: dict[str, int], conditions: list[Obj],
                  created: bool) -> list[Obj]:
        """syncRolloutStatus: NewReplicaSetCreated, ReplicaSetUpdated, NewReplicaSetAvailable, or past the
        progress deadline ProgressDeadlineExceeded."""
        now, name = self.ctx.now(), new["metadata"]["name"]
        current = next((c for c in conditions if c["type"] == "Progressing"), None)
        deadline = int(d["spec"].get("progressDeadlineSeconds", 600))
        if created:
            return set_condition(conditions, "Progressing", "True", "NewReplicaSetCreated",
                                 f'Created new replica set "{name}"', now, lastUpdateTime=now)
        if _complete({**d, "status": status}):
            if current is None or current.get("reason") != "NewReplicaSetAvailable":
                return set_condition(conditions, "Progressing", "True", "NewReplicaSetAvailable",
                                     f'ReplicaSet "{name}" has successfully progressed.', now, lastUpdateTime=now)
            return conditions
        was_old = int(old.get("replicas", 0)) - int(old.get("updatedReplicas", 0))
        moving = (counts["updatedReplicas"] != int(old.get("updatedReplicas", 0))
                  or counts["replicas"] - counts["updatedReplicas"] < was_old
                  or counts["readyReplicas"] > int(old.get("readyReplicas", 0))
                  or counts["availableReplicas"] > int(old.get("availableReplicas", 0)))
        if moving:
            kept = [c for c in conditions if c["type"] != "Progressing"]
            since = current["lastTransitionTime"] if current and current.get("status") == "True" else now
            return [*kept, {"type": "Progressing", "status": "True", "lastUpdateTime": now,
                            "lastTransitionTime": since, "reason": "ReplicaSetUpdated",
                            "message": f'ReplicaSet "{name}" is progressing.'}]
        if current is None or current.get("reason") == "NewReplicaSetAvailable":
            return conditions
        since = parse_time(current.get("lastUpdateTime"))
        if current.get("reason") == "ProgressDeadlineExceeded" or (
                since is not None and (self.ctx.clock() - since).total_seconds() > deadline):
            return set_condition(conditions, "Progressing", "False", "ProgressDeadlineExceeded",
                                 f'ReplicaSet "{name}" has timed out progressing.', now, lastUpdateTime=now)
        return conditions

    def _clean(self, d: Obj, olds: list[Obj]) -> None:
        """Delete the oldest scaled-down ReplicaSets beyond revisionHistoryLimit."""
        limit = int(d["spec"].get("revisionHistoryLimit", 10))
        idle = [r for r in olds if _replicas(r) == 0 and _stat(r, "replicas") == 0 and not deleting(r)]
        for rs in sorted(idle, key=_revision)[:max(0, len(idle) - limit)]:
            self.ctx.delete("replicasets", rs)


def _complete(d: Obj) -> bool:
    """DeploymentComplete: every replica updated and available, and this generation observed."""
    status, desired = d.get("status") or {}, _replicas(d)
    return (int(status.get("updatedReplicas", 0)) == desired and int(status.get("replicas", 0)) == desired
            and int(status.get("availableReplicas", 0)) == desired
            and int(status.get("observedGeneration", 0)) >= int(d["metadata"].get("generation", 1)))


def _keep_update_times(before: list[Obj], after: list[Obj]) -> list[Obj]:
    """A condition whose status, reason and message did not change keeps its lastUpdateTime."""
    kept: list[Obj] = []
    for cond in after:
        old = next((c for c in before if c["type"] == cond["type"]), None)
        same = old is not None and all(old.get(k) == cond.get(k) for k in ("status", "reason", "message"))
        kept.append(old if old is not None and same and cond.get("reason") != "ReplicaSetUpdated" else cond)
    return kept
