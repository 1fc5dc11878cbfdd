"""Read a Deployment's rollout the way ``kubectl rollout status`` does, and explain pods that do not start."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lightkube import Client
from lightkube.models.core_v1 import ContainerStatus
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Event, Pod

from shipyard.kube.client import translate
from shipyard.kube.scheduling import scheduler_message, unschedulable_reason

# Waiting reasons that are only a phase of a healthy start.
_STARTING = {"ContainerCreating", "PodInitializing"}


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout stands: done, failed (past its progress deadline), or still going (message says why)."""

    done: bool
    failed: bool
    message: str


def rollout_state(deployment: Deployment) -> RolloutState:
    """Judge a Deployment exactly as kubectl's DeploymentStatusViewer does."""
    name = deployment.metadata.name if deployment.metadata else "?"
    generation = (deployment.metadata.generation if deployment.metadata else None) or 0
    status = deployment.status
    if status is None or (status.observedGeneration or 0) < generation:
        return RolloutState(False, False, "waiting for the deployment spec update to be observed")
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return RolloutState(False, True, f"deployment {name} exceeded its progress deadline")
    wanted = deployment.spec.replicas if deployment.spec else None
    updated, replicas = status.updatedReplicas or 0, status.replicas or 0
    available = status.availableReplicas or 0
    if wanted is not None and updated < wanted:
        return RolloutState(False, False, f"{updated} out of {wanted} new replicas have been updated")
    if replicas > updated:
        return RolloutState(False, False, f"{replicas - updated} old replicas are pending termination")
    if available < updated:
        return RolloutState(False, False, f"{available} of {updated} updated replicas are available")
    return RolloutState(True, False, f"deployment {name} successfully rolled out")


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def container_problem(status: ContainerStatus) -> str | None:
    """Return why a container does not run (ImagePullBackOff, CrashLoopBackOff and their messages), or None."""
    state = status.state
    waiting = state.waiting if state else None
    if waiting is None or not waiting.reason or waiting.reason in _STARTING:
        return None
    text = f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
    last = status.lastState.terminated if status.lastState else None
    if last is not None:
        text += f" (last exit code {last.exitCode}{', ' + last.reason if last.reason else ''}" \
                f"{': ' + last.message if last.message else ''})"
    return _one_line(text)


def _unready_message(client: Client, namespace: str, pod_name: str) -> str | None:
    """Return the newest failed-probe event of the pod, if the API kept one."""
    with translate(f"list events of pod {namespace}/{pod_name}"):
        events = [e for e in client.list(Event, namespace=namespace, fields={"involvedObject.name": pod_name})
                  if e.reason == "Unhealthy" and e.message]
    events.sort(key=lambda e: str(e.lastTimestamp or e.eventTime or ""))
    return events[-1].message if events else None


def pod_problem(client: Client, namespace: str, pod: Pod) -> str | None:
    """Return the reason users need for a pod that is not ready: scheduler, image, crash or probe."""
    name = pod.metadata.name if pod.metadata and pod.metadata.name else "?"
    unschedulable = unschedulable_reason(pod)
    if unschedulable is not None:
        reason = scheduler_message(client, namespace, name) or unschedulable
        return f"pod {name} cannot be scheduled: {_one_line(reason)}"
    statuses = [*(pod.status.initContainerStatuses or []), *(pod.status.containerStatuses or [])] \
        if pod.status else []
    for status in statuses:
        problem = container_problem(status)
        if problem is not None:
            return f"pod {name} container {status.name}: {problem}"
    if any(not s.ready for s in statuses):
        message = _unready_message(client, namespace, name)
        return f"pod {name} is not ready" + (f": {_one_line(message)}" if message else "")
    return None


def pod_problems(client: Client, namespace: str, pods: Iterable[Pod], limit: int = 2) -> list[str]:
    """Return up to ``limit`` distinct problems of the given pods."""
    found: list[str] = []
    for pod in pods:
        problem = pod_problem(client, namespace, pod)
        if problem is not None and problem.split(":", 1)[-1] not in {p.split(":", 1)[-1] for p in found}:
            found.append(problem)
        if len(found) >= limit:
            break
    return found
