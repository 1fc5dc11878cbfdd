"""The Job controller (batch/v1) as Kubernetes 1.35's job-controller syncs a Job (pkg/controller/job).

Modelled: NonIndexed and Indexed completion (pods ``<job>-<index>-<random>``, the completion-index annotation and
label, ``JOB_COMPLETION_INDEX``, hostname ``<job>-<index>``), parallelism and completions, backoffLimit with the
10 s doubling pod-failure backoff, backoffLimitPerIndex and maxFailedIndexes, podFailurePolicy (onExitCodes,
onPodConditions; FailJob, Ignore, Count, FailIndex), podReplacementPolicy, activeDeadlineSeconds, suspend,
ttlSecondsAfterFinished, the tracking finalizer, the status counters and the delayed terminal conditions of 1.31+
(FailureTarget / SuccessCriteriaMet first, Failed / Complete once no pod is terminating). Not modelled:
successPolicy, managedBy other than the default, pod restarts under restartPolicy OnFailure.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field

from tests.twin.controlkit import (
    Context,
    Obj,
    active,
    deleting,
    has_true,
    owner_reference,
    parse_time,
    phase,
    ready,
    removal_order,
    set_condition,
    terminating,
)

COMPONENT = "job-controller"
INDEX = "batch.kubernetes.io/job-completion-index"
FAILURES = "batch.kubernetes.io/job-index-failure-count"
IGNORED = "batch.kubernetes.io/job-index-ignored-failure-count"
TRACKING = "batch.kubernetes.io/job-tracking"
POD_BACKOFF, MAX_POD_BACKOFF = 10.0, 360.0
_INT32_MAX = 2**31 - 1


@dataclass
class _Sync:
    """What one sync of one Job computes (syncJobCtx)."""

    job: Obj
    pods: list[Obj]
    indexed: bool
    completions: int | None
    succeeded: set[int] = field(default_factory=set)
    failed_indexes: set[int] | None = None
    finished: tuple[str, str, str] | None = None  # (Complete|Failed, reason, message)
    succeeded_n: int = 0

    @property
    def spec(self) -> Obj:
        spec: Obj = self.job["spec"]
        return spec

    def index(self, pod: Obj) -> int | None:
        text = (pod["metadata"].get("annotations") or {}).get(INDEX, "")
        return int(text) if text.isdigit() and int(text) < (self.completions or 0) else None

    def valid(self, pod: Obj) -> bool:
        return not self.indexed or self.index(pod) is not None

    @property
    def only_failed_replaced(self) -> bool:
        return self.spec.get("podReplacementPolicy") == "Failed" or bool(self.spec.get("podFailurePolicy"))

    def failed(self, pod: Obj) -> bool:
        """isPodFailed: Failed, or (unless only failed pods are replaced) deleted before it succeeded."""
        if phase(pod) == "Failed":
            return True
        return not self.only_failed_replaced and deleting(pod) and phase(pod) != "Succeeded"


class JobController:
    """Level-triggered sync of every Job; the per-Job pod-failure backoff lives here, as in the real one."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.backoff: dict[str, tuple[int, datetime.datetime]] = {}  # job uid -> (failures, last failure)

    def sync_all(self) -> None:
        for job in self.ctx.items("jobs"):
            self.sync(job)

    def sync(self, stored: Obj) -> None:
        if has_true(stored, "Complete") or has_true(stored, "Failed"):
            self._expire(stored)
            return
        if stored["spec"].get("managedBy", "kubernetes.io/job-controller") != "kubernetes.io/job-controller":
            return
        job = copy.deepcopy(stored)
        spec, status = job["spec"], job.setdefault("status", {})
        if "completions" not in spec and "parallelism" not in spec:
            spec["completions"] = 1
        s = _Sync(job, self.ctx.owned("pods", job), spec.get("completionMode") == "Indexed", spec.get("completions"))
        now = self.ctx.clock()
        tracked = [p for p in s.pods if TRACKING in (p["metadata"].get("finalizers") or []) and s.valid(p)]
        new_ok = [p for p in tracked if phase(p) == "Succeeded"]
        new_failed = [p for p in tracked if s.failed(p)]
        counted = [p for p in new_failed if _match(spec.get("podFailurePolicy"), p)[1]]
        self._note_backoff(job, new_ok, new_failed, now)
        s.succeeded_n = int(status.get("succeeded", 0)) + len(new_ok)
        if not status.get("startTime") and not spec.get("suspend"):
            status["startTime"] = self.ctx.now()
        self._judge(s, int(status.get("failed", 0)) + len(counted), now)
        actives = [p for p in s.pods if active(p)]
        if s.finished is not None and s.finished[0] == "Failed":
            for pod in actives:
                self.ctx.delete("pods", pod)
            counted += [p for p in actives if p in tracked]  # a failed Job's unfinished pods count as failed
            running = 0
        else:
            running = len(actives) if deleting(job) else self._manage(s, actives, now)
            done = s.succeeded_n >= s.completions if s.completions is not None else s.succeeded_n > 0
            if s.finished is None and done and running == 0:
                s.finished = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        held = len([p for p in self.ctx.owned("pods", job) if terminating(p)])
        self._status(s, running, held, int(status.get("failed", 0)) + len(counted))
        self._finish(s, held)
        if self.ctx.write("jobs", job):
            self._report(stored, job)
        for pod in {p["metadata"]["uid"]: p for p in [*new_ok, *new_failed, *counted]}.values():
            self.ctx.drop_finalizer("pods", pod, TRACKING)

    # -- judging the Job ------------------------------------------------------------------------------------

    def _judge(self, s: _Sync, failed_total: int, now: datetime.datetime) -> None:
        """Decide whether the Job has failed or met its success criteria (finishedCondition)."""
        job, spec = s.job, s.spec
        per_index = spec.get("backoffLimitPerIndex") is not None
        limit = int(spec.get("backoffLimit", _INT32_MAX if per_index else 6))
        for kind, terminal in (("SuccessCriteriaMet", "Complete"), ("FailureTarget", "Failed")):
            interim = next((c for c in job["status"].get("conditions", []) if c["type"] == kind
                            and c["status"] == "True"), None)
            if interim is not None and s.finished is None:
                s.finished = (terminal, interim.get("reason", ""), interim.get("message", ""))
        if s.finished is None and spec.get("podFailurePolicy"):
            for pod in s.pods:
                message = _match(spec["podFailurePolicy"], pod)[0] if s.failed(pod) else None
                if message:
                    s.finished = ("Failed", "PodFailurePolicy", message)
                    break
        if s.finished is None and failed_total > limit:
            s.finished = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif s.finished is None and self._past_deadline(job, now):
            s.finished = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        if not s.indexed:
            return
        s.succeeded = _parse_indexes(job["status"].get("completedIndexes", "")) | {
            i for p in s.pods if phase(p) == "Succeeded" and (i := s.index(p)) is not None}
        s.succeeded_n = len(s.succeeded)
        if per_index:
            s.failed_indexes = self._failed_indexes(s)
            count, ceiling = len(s.failed_indexes), spec.get("maxFailedIndexes")
            if s.finished is None and ceiling is not None and count > int(ceiling):
                s.finished = ("Failed", "MaxFailedIndexesExceeded",
                              "Job has exceeded the specified maximal number of failed indexes")
            elif s.finished is None and count and count + len(s.succeeded) >= (s.completions or 0):
                s.finished = ("Failed", "FailedIndexes", "Job has failed indexes")

    def _failed_indexes(self, s: _Sync) -> set[int]:
        failed = _parse_indexes(s.job["status"].get("failedIndexes") or "")
        limit = int(s.spec["backoffLimitPerIndex"])
        for pod in s.pods:
            index = s.index(pod)
            if index is None or index in s.succeeded or not s.failed(pod):
                continue
            _, counts, action = _match(s.spec.get("podFailurePolicy"), pod)
            if action == "FailIndex" or (counts and _annotation(pod, FAILURES) + 1 > limit):
                failed.add(index)
        return failed

    def _past_deadline(self, job: Obj, now: datetime.datetime) -> bool:
        deadline, started = job["spec"].get("activeDeadlineSeconds"), parse_time(job["status"].get("startTime"))
        if deadline is None or started is None or job["spec"].get("suspend"):
            return False
        return now - started >= datetime.timedelta(seconds=int(deadline))

    # -- pods -----------------------------------------------------------------------------------------------

    def _manage(self, s: _Sync, actives: list[Obj], now: datetime.datetime) -> int:
        """manageJob: delete surplus pods or create missing ones; return the number now active."""
        spec, job = s.spec, s.job
        if spec.get("suspend"):
            for pod in actives:
                self._delete(job, pod)
            return 0
        parallelism = int(spec.get("parallelism", 1))
        if s.completions is None:
            want = len(actives) if s.succeeded_n else parallelism
        else:
            want = max(0, min(parallelism, s.completions - s.succeeded_n))
        surplus = self._duplicates(s, actives) if s.indexed else []
        rest = [p for p in actives if p not in surplus]
        surplus += removal_order(rest)[:max(0, len(actives) - want - len(surplus))]
        if surplus:
            for pod in surplus:
                self._delete(job, pod)
            return len(actives) - len(surplus)
        held = len([p for p in s.pods if terminating(p)]) if s.only_failed_replaced else 0
        missing = want - held - len(actives)
        if missing <= 0 or not self.ctx.may_create(job):
            return len(actives)
        per_index = spec.get("backoffLimitPerIndex") is not None
        if not per_index and self._remaining(job, now) > 0:
            return len(actives)
        indexes: list[int | None] = [None] * missing
        if s.indexed:
            indexes = list(self._pending_indexes(s, actives, missing, now))
        created = 0
        batch = 1
        while indexes:
            for index in indexes[:batch]:
                if self.ctx.create_pod(job, self._pod(s, index), COMPONENT)[0] is None:
                    return len(actives) + created
                created += 1
            indexes, batch = indexes[batch:], batch * 2
        return len(actives) + created

    def _delete(self, job: Obj, pod: Obj) -> None:
        self.ctx.delete("pods", pod)
        self.ctx.event(job, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", COMPONENT)

    def _duplicates(self, s: _Sync, actives: list[Obj]) -> list[Obj]:
        """Pods with no valid index, a second pod of an index, or one of an index already succeeded."""
        seen: set[int] = set()
        extra = []
        for pod in sorted(actives, key=lambda p: (not ready(p), p["metadata"]["name"])):
            index = s.index(pod)
            if index is None or index in seen or index in s.succeeded:
                extra.append(pod)
            else:
                seen.add(index)
        return extra

    def _pending_indexes(self, s: _Sync, actives: list[Obj], count: int, now: datetime.datetime) -> list[int]:
        """firstPendingIndexes, less the indexes still in their per-index backoff."""
        taken = s.succeeded | {s.index(p) for p in actives} | (s.failed_indexes or set())
        if s.only_failed_replaced:
            taken |= {s.index(p) for p in s.pods if terminating(p)}
        pending = []
        for index in range(s.completions or 0):
            if index in taken:
                continue
            last = self._last_failure(s, index)
            if s.spec.get("backoffLimitPerIndex") is not None and last is not None:
                tries = _annotation(last, FAILURES) + _annotation(last, IGNORED) + 1
                wait = min(POD_BACKOFF * 2 ** (tries - 1), MAX_POD_BACKOFF)
                if _finished_at(last, now) + datetime.timedelta(seconds=wait) > now:
                    continue
            pending.append(index)
        return pending[:count]

    def _last_failure(self, s: _Sync, index: int) -> Obj | None:
        failed = [p for p in s.pods if s.index(p) == index and s.failed(p)]
        return max(failed, key=lambda p: (_annotation(p, FAILURES) + _annotation(p, IGNORED),
                                          p["metadata"].get("creationTimestamp", ""))) if failed else None

    def _pod(self, s: _Sync, index: int | None) -> Obj:
        job = s.job
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        pod: Obj = copy.deepcopy(job["spec"]["template"])
        meta, spec = pod.setdefault("metadata", {}), pod.setdefault("spec", {})
        meta.update(namespace=job["metadata"]["namespace"], ownerReferences=[owner_reference(job)],
                    finalizers=[*meta.get("finalizers", []), TRACKING], generateName=f"{name}-")
        labels, annotations = meta.setdefault("labels", {}), meta.setdefault("annotations", {})
        labels.update({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                       "controller-uid": uid, "job-name": name})
        if index is None:
            return pod
        meta["generateName"] = f"{name}-{index}-"
        annotations[INDEX] = labels[INDEX] = str(index)
        spec["hostname"] = f"{name}-{index}"
        env = {"name": "JOB_COMPLETION_INDEX",
               "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX}']"}}}
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            if all(e.get("name") != "JOB_COMPLETION_INDEX" for e in container.get("env", [])):
                container.setdefault("env", []).append(env)
        last = self._last_failure(s, index)
        if s.spec.get("backoffLimitPerIndex") is not None:
            counts = last is not None and _match(s.spec.get("podFailurePolicy"), last)[1]
            annotations[FAILURES] = str(_annotation(last, FAILURES) + (1 if counts else 0)) if last else "0"
            ignored = _annotation(last, IGNORED) + (0 if counts else 1) if last else 0
            if ignored:
                annotations[IGNORED] = str(ignored)
        return pod

    # -- backoff, status, conditions -------------------------------------------------------------------------

    def _note_backoff(self, job: Obj, succeeded: list[Obj], failed: list[Obj], now: datetime.datetime) -> None:
        uid = job["metadata"]["uid"]
        count, last = self.backoff.get(uid, (0, now))
        if succeeded:
            newest = max(_finished_at(p, now) for p in succeeded)
            failed, count = [p for p in failed if _finished_at(p, now) > newest], 0
        if failed:
            count, last = count + len(failed), max(_finished_at(p, now) for p in failed)
        self.backoff[uid] = (count, last)

    def _remaining(self, job: Obj, now: datetime.datetime) -> float:
        count, last = self.backoff.get(job["metadata"]["uid"], (0, now))
        if not count:
            return 0.0
        wait = min(POD_BACKOFF * 2 ** (count - 1), MAX_POD_BACKOFF)
        return max(0.0, (last + datetime.timedelta(seconds=wait) - now).total_seconds())

    def _status(self, s: _Sync, running: int, held: int, failed: int) -> None:
        status, now = s.job["status"], self.ctx.now()
        ready_count = len([p for p in self.ctx.owned("pods", s.job) if active(p) and ready(p)])
        for key, value in (("active", running), ("failed", failed), ("succeeded", s.succeeded_n)):
            status[key] = value
            if not value:  # omitempty, as the API serializes the counters
                status.pop(key)
        status.update(ready=ready_count, terminating=held, uncountedTerminatedPods={})
        if s.indexed:
            status["completedIndexes"] = _format_indexes(s.succeeded)
        if s.failed_indexes is not None:
            status["failedIndexes"] = _format_indexes(s.failed_indexes)
        conditions = status.get("conditions", [])
        suspended = next((c for c in conditions if c["type"] == "Suspended"), None)
        if s.spec.get("suspend") and s.finished is None:
            if suspended is None or suspended["status"] != "True":
                status["conditions"] = set_condition(conditions, "Suspended", "True", "JobSuspended",
                                                     "Job suspended", now, lastProbeTime=now)
                self.ctx.event(s.job, "Normal", "Suspended", "Job suspended", COMPONENT)
        elif suspended is not None and suspended["status"] == "True":
            status["conditions"] = set_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed", now,
                                                 lastProbeTime=now)
            status["startTime"] = now  # activeDeadlineSeconds counts from the resume
            self.ctx.event(s.job, "Normal", "Resumed", "Job resumed", COMPONENT)

    def _finish(self, s: _Sync, held: int) -> None:
        if s.finished is None:
            return
        terminal, reason, message = s.finished
        status, now = s.job["status"], self.ctx.now()
        interim = "FailureTarget" if terminal == "Failed" else "SuccessCriteriaMet"
        conditions = status.setdefault("conditions", [])
        if not any(c["type"] == interim for c in conditions):
            conditions.append({"type": interim, "status": "True", "reason": reason, "message": message,
                               "lastProbeTime": now, "lastTransitionTime": now})
        if held:
            return
        conditions.append({"type": terminal, "status": "True", "reason": reason, "message": message,
                           "lastProbeTime": now, "lastTransitionTime": now})
        if terminal == "Complete":
            status["completionTime"] = now

    def _report(self, before: Obj, after: Obj) -> None:
        """Record the Completed event or the failure's Warning, once, as the Job becomes finished."""
        for terminal in ("Complete", "Failed"):
            if has_true(after, terminal) and not has_true(before, terminal):
                cond = next(c for c in after["status"]["conditions"] if c["type"] == terminal)
                if terminal == "Complete":
                    self.ctx.event(after, "Normal", "Completed", "Job completed", COMPONENT)
                else:
                    self.ctx.event(after, "Warning", cond["reason"], cond["message"], COMPONENT)

    def _expire(self, job: Obj) -> None:
        """The TTL-after-finished controller: delete a finished Job (foreground) once its TTL has passed."""
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None or deleting(job):
            return
        done = next(c for c in job["status"]["conditions"] if c["type"] in ("Complete", "Failed")
                    and c["status"] == "True")
        finished = parse_time(job["status"].get("completionTime") or done.get("lastTransitionTime"))
        if finished is not None and self.ctx.clock() >= finished + datetime.timedelta(seconds=int(ttl)):
            self.ctx.delete("jobs", job, propagation="Foreground")


def _annotation(pod: Obj | None, key: str) -> int:
    text = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(key, "0")
    return int(text) if text.isdigit() else 0


def _finished_at(pod: Obj, default: datetime.datetime) -> datetime.datetime:
    """When a pod finished: its containers' latest finishedAt, else its last condition change, else now."""
    times = [parse_time(c.get("state", {}).get("terminated", {}).get("finishedAt"))
             for c in (pod.get("status") or {}).get("containerStatuses", [])]
    times += [parse_time(c.get("lastTransitionTime")) for c in (pod.get("status") or {}).get("conditions", [])]
    found = [t for t in times if t is not None]
    return max(found) if found else default


def _match(policy: Obj | None, pod: Obj) -> tuple[str | None, bool, str | None]:
    """matchPodFailurePolicy: (the FailJob message or None, whether the failure counts, the rule's action)."""
    if not policy:
        return None, True, None
    meta = pod["metadata"]
    who = f"{meta.get('namespace')}/{meta['name']}"
    status = pod.get("status") or {}
    for at, rule in enumerate(policy.get("rules", [])):
        action = rule["action"]
        matched = None
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            for c in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
                code = (c.get("state", {}).get("terminated") or {}).get("exitCode")
                if code in (None, 0) or codes.get("containerName") not in (None, c["name"]):
                    continue
                if (code in codes["values"]) == (codes["operator"] == "In"):
                    matched = f"Container {c['name']} for pod {who} failed with exit code {code}"
                    break
        for pattern in rule.get("onPodConditions", []):
            if any(c.get("type") == pattern["type"] and c.get("status") == pattern.get("status", "True")
                   for c in status.get("conditions", [])) and matched is None:
                matched = f"Pod {who} has condition {pattern['type']}"
        if matched is None:
            continue
        if action == "FailJob":
            return f"{matched} matching FailJob rule at index {at}", True, action
        return None, action != "Ignore", action
    return None, True, None


def _parse_indexes(text: str) -> set[int]:
    found: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def _format_indexes(indexes: set[int]) -> str:
    """orderedIntervals.String: runs of three or more as ``a-b``, pairs as ``a,b``."""
    runs: list[list[int]] = []
    for i in sorted(indexes):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [f"{a}" if a == b else f"{a},{b}" if b == a + 1 else f"{a}-{b}" for a, b in runs]
    return ",".join(parts)
