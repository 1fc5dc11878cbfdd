"""Fail a training Job whose pod stays unschedulable too long, with the scheduler's reason.

Kubernetes lets a Job's pod sit Pending forever when no node fits it (no GPU node, the node group at its
maximum, a taint nobody tolerates): ``activeDeadlineSeconds`` only counts once the Job started. The pipeline
calls :meth:`SchedulingWatch.check` while it waits for the training run; the Job's own annotation
``shipyard.dev/unschedulable-timeout`` (from the work pool's job template) says how long is too long.

The watch polls with LIST rather than a WATCH stream on purpose: what it waits for is a deadline with no
event attached, and one LIST per pipeline poll is cheap.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lightkube import Client
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Pod
from lightkube.types import CascadeType

from shipyard.errors import KubeError
from shipyard.kube.client import translate

log = logging.getLogger(__name__)

TIMEOUT_ANNOTATION = "shipyard.dev/unschedulable-timeout"
DEFAULT_TIMEOUT_SECONDS = 900.0
FLOW_RUN_LABEL = "prefect.io/flow-run-id"  # set by the Prefect worker on the Jobs it creates
SHIPYARD_RUN_LABEL = "shipyard.dev/flow-run-id"  # set by Shipyard on the Jobs it creates itself (multi-node)


def parse_duration(text: str) -> float:
    """Parse '90', '90s', '15m' or '2h' into seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise KubeError(f"annotation {TIMEOUT_ANNOTATION}='{text}' is not a duration like '900s' or '15m'")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def unschedulable_reason(pod: Pod) -> str | None:
    """Return the scheduler's message if the pod is Pending because no node fits it, else None."""
    for condition in (pod.status.conditions or []) if pod.status else []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            return condition.message or "Unschedulable"
    return None


def newest_event_message(client: Client, namespace: str, kind: str, name: str, reason: str) -> str | None:
    """Return the message of the newest ``reason`` event about the ``kind`` object ``name``, if the API kept one."""
    with translate(f"list events of {kind.lower()} {namespace}/{name}"):
        events = [e for e in client.list(Event, namespace=namespace, fields={"involvedObject.name": name})
                  if e.reason == reason and e.message and (e.involvedObject.kind or kind) == kind]
    events.sort(key=lambda e: str(e.lastTimestamp or e.eventTime or ""))
    return events[-1].message if events else None


def scheduler_message(client: Client, namespace: str, pod_name: str) -> str | None:
    """Return the newest FailedScheduling event's message for the pod, if the API kept one."""
    return newest_event_message(client, namespace, "Pod", pod_name, "FailedScheduling")


@dataclass
class SchedulingWatch:
    """Watch the Job of one Prefect flow run; fail it when its pod stays unschedulable past the timeout."""

    client: Client
    namespace: str
    flow_run_id: str
    clock: Callable[[], float] = time.monotonic
    label: str = FLOW_RUN_LABEL  # the label that names the flow run on its Job
    _since: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        """Look once; delete the Job and raise KubeError with the scheduler's reason if it waited too long."""
        with translate(f"read the Job of flow run {self.flow_run_id} in namespace {self.namespace}"):
            jobs = list(self.client.list(Job, namespace=self.namespace, labels={self.label: self.flow_run_id}))
            if not jobs:
                return  # the worker has not created it yet
            job = jobs[0]
            name = job.metadata.name if job.metadata and job.metadata.name else "?"
            pods = list(self.client.list(Pod, namespace=self.namespace, labels={"job-name": name}))
        if not pods:
            refused = self._refused(name)
            if refused is not None:
                self._delete(name)
                raise KubeError(f"training job {self.namespace}/{name} cannot create pods and was deleted: {refused}")
        timeout = self._timeout(job)
        now = self.clock()
        for pod in pods:
            pod_name = pod.metadata.name if pod.metadata and pod.metadata.name else "?"
            reason = unschedulable_reason(pod)
            if reason is None:
                self._since.pop(pod_name, None)
                continue
            waited = now - self._since.setdefault(pod_name, now)
            if waited >= timeout:
                self._fail(name, pod_name, waited, self._scheduler_message(pod_name) or reason)

    def _timeout(self, job: Job) -> float:
        annotations = (job.metadata.annotations if job.metadata else None) or {}
        value = annotations.get(TIMEOUT_ANNOTATION)
        return parse_duration(value) if value is not None else DEFAULT_TIMEOUT_SECONDS

    def _scheduler_message(self, pod_name: str) -> str | None:
        return scheduler_message(self.client, self.namespace, pod_name)

    def _refused(self, job_name: str) -> str | None:
        """Return the Job controller's newest FailedCreate message (admission refused its pod), if any.

        A refusal never resolves by waiting (the pod spec is what is refused), while the Job stays active with no
        pods until activeDeadlineSeconds: so it fails the run at once.
        """
        message = newest_event_message(self.client, self.namespace, "Job", job_name, "FailedCreate")
        return " ".join(message.split()) if message else None

    def _delete(self, job_name: str) -> None:
        with translate(f"delete job {self.namespace}/{job_name}"):
            self.client.delete(Job, job_name, namespace=self.namespace, cascade=CascadeType.BACKGROUND)

    def _fail(self, job_name: str, pod_name: str, waited: float, reason: str) -> None:
        log.warning("job %s/%s: pod %s unschedulable for %.0fs; deleting the job", self.namespace, job_name,
                    pod_name, waited)
        self._delete(job_name)
        raise KubeError(f"training job {self.namespace}/{job_name} stayed unschedulable for {waited:.0f}s and was "
                        f"deleted; the scheduler said: {reason.strip()}")
