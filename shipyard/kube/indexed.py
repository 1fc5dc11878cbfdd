"""Multi-node training on Kubernetes' own machinery: an Indexed Job plus a headless Service, through lightkube.

One Job of ``nodes`` pods (``completionMode: Indexed``, ``parallelism = completions = nodes``) runs
:mod:`shipyard.training.node` in every pod; a headless Service owned by the Job gives index 0 the stable
name ``<job>-0.<job>.<namespace>.svc`` where the torchrun rendezvous lives. Deleting the Job deletes its
pods and, through the owner reference, the Service. The pods get the same scheduling guards as the
single-pod ``gpu-train`` template (``deployments/templates/gpu-train.json``; a test keeps the defaults equal).

A pod that fails ends the attempt at once (``backoffLimitPerIndex: 0``, ``maxFailedIndexes: 0``) except a
disruption (preemption, drain), which the pod failure policy ignores; :func:`failures` tells a lost worker
(killed, OOM, evicted, node gone) from a worker that failed on its own.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, cast

from lightkube import ApiError, Client
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod, Service
from lightkube.types import CascadeType

from shipyard.errors import KubeError
from shipyard.kube.client import translate
from shipyard.kube.scheduling import SHIPYARD_RUN_LABEL, TIMEOUT_ANNOTATION
from shipyard.training.node import RENDEZVOUS_PORT, NodeArgs

log = logging.getLogger(__name__)

CONTAINER = "train"
JOB_LABEL = "shipyard.dev/job"  # on the pods: what the headless Service selects
PARAMS_ANNOTATION = "shipyard.dev/train-params"  # the run's TrainParams, mounted as a file by the downward API
PARAMS_DIR = "/etc/shipyard"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
UID = 1000  # the training image's user (infra/docker/Dockerfile)
HOME = "/home/shipyard"  # the image's HOME and SHIPYARD_HOME: dataset cache, library caches
# The restricted Pod Security profile the namespace enforces (infra/k8s/base.yaml): without these the API server
# refuses every pod of the Job, which then waits with FailedCreate events until its deadline.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
NO_EVICT = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "karpenter.sh/do-not-disrupt": "true"}
# Exit codes of a worker that was killed rather than failing on its own: SIGKILL (OOM, node gone), SIGTERM.
LOST_EXIT_CODES = (137, 143)
LOST_REASONS = ("OOMKilled", "Evicted", "NodeLost", "Shutdown", "Terminated", "UnexpectedAdmissionError")
# A worker whose rendezvous failed (a peer never came, index 0's store was unreachable) exits 1 like a bug, but
# its last words name torch's rendezvous errors: the next attempt may well meet, so it counts as lost.
RENDEZVOUS_ERRORS = ("RendezvousTimeoutError", "RendezvousConnectionError", "RendezvousClosedError",
                     "DistStoreError")


@dataclass(frozen=True)
class PodResources:
    """Per-pod knobs; the defaults are the gpu-train work pool's job-variable defaults."""

    service_account_name: str = "shipyard-train"
    priority_class_name: str = "shipyard-train"
    image_pull_policy: str = "IfNotPresent"
    cpu_request: str = "4"
    memory_request: str = "16Gi"
    memory_limit: str = "32Gi"
    shm_size: str = "8Gi"
    scratch_size: str = "100Gi"
    active_deadline_seconds: int = 86400
    termination_grace_period_seconds: int = 120
    unschedulable_timeout_seconds: int = 900
    finished_job_ttl: int = 86400
    rendezvous_timeout_seconds: int = 900  # how long torchrun waits for every pod to join


@dataclass(frozen=True)
class JobPlan:
    """Everything that makes one attempt's Job and Service."""

    name: str
    namespace: str
    image: str
    run_id: str  # the launching run (Prefect flow run id): the unschedulable watch finds the Job by it
    dataset: str
    version: str
    params_json: str
    nodes: int
    procs_per_node: int
    env: dict[str, str] = field(default_factory=dict)
    pods: PodResources = field(default_factory=PodResources)
    key: str = ""  # the training key the workers write under ("" lets them derive it from data, params and code)

    def node_args(self, rdzv_endpoint: str | None = None) -> NodeArgs:
        """Return the arguments every pod runs with (rendezvous at index 0's DNS name unless given)."""
        host = f"{self.name}-0.{self.name}.{self.namespace}.svc"
        return NodeArgs(self.nodes, self.procs_per_node, rdzv_endpoint or f"{host}:{RENDEZVOUS_PORT}", self.name,
                        self.pods.rendezvous_timeout_seconds, self.dataset, self.version,
                        PurePosixPath(PARAMS_DIR) / "params.json", self.key)


def _container(plan: JobPlan) -> dict[str, Any]:
    pods = plan.pods
    return {
        "name": CONTAINER, "image": plan.image, "imagePullPolicy": pods.image_pull_policy,
        "command": plan.node_args().command(),
        "env": [{"name": k, "value": v} for k, v in sorted({"PYTHONUNBUFFERED": "1", **plan.env}.items())],
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
        "resources": {"requests": {"cpu": pods.cpu_request, "memory": pods.memory_request},
                      "limits": {"memory": pods.memory_limit, "nvidia.com/gpu": plan.procs_per_node}},
        # The last lines of a failed worker's output become the pod's termination message: the launcher quotes it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 - a mount point, not a file
                         {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own emptyDir
                         {"name": "home", "mountPath": HOME},
                         {"name": "params", "mountPath": PARAMS_DIR, "readOnly": True}],
    }


def job_manifest(plan: JobPlan) -> dict[str, Any]:
    """Return the Indexed Job of one attempt."""
    pods = plan.pods
    # Not Prefect's prefect.io/flow-run-id: its Kubernetes observer marks a flow run Crashed when a Job with that
    # label is deleted, and a lost attempt's Job is deleted while the train flow goes on with the next attempt.
    labels = {"app.kubernetes.io/name": "shipyard", "app.kubernetes.io/component": "training",
              SHIPYARD_RUN_LABEL: plan.run_id}
    pod_spec = {
        "subdomain": plan.name, "restartPolicy": "Never",
        "serviceAccountName": pods.service_account_name, "priorityClassName": pods.priority_class_name,
        "terminationGracePeriodSeconds": pods.termination_grace_period_seconds,
        "securityContext": POD_SECURITY,
        "nodeSelector": {"role": "train"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [_container(plan)],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": pods.shm_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
            {"name": "home", "emptyDir": {"sizeLimit": pods.scratch_size}},
            {"name": "params", "downwardAPI": {"items": [{
                "path": "params.json", "fieldRef": {"fieldPath": f"metadata.annotations['{PARAMS_ANNOTATION}']"}}]}},
        ],
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": plan.name, "namespace": plan.namespace, "labels": labels,
                     "annotations": {TIMEOUT_ANNOTATION: f"{pods.unschedulable_timeout_seconds}s"}},
        "spec": {
            "completionMode": "Indexed", "completions": plan.nodes, "parallelism": plan.nodes,
            "backoffLimitPerIndex": 0, "maxFailedIndexes": 0,
            "activeDeadlineSeconds": pods.active_deadline_seconds, "ttlSecondsAfterFinished": pods.finished_job_ttl,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "template": {
                "metadata": {"labels": {**labels, JOB_LABEL: plan.name},
                             "annotations": {**NO_EVICT, PARAMS_ANNOTATION: plan.params_json}},
                "spec": pod_spec,
            },
        },
    }


def service_manifest(plan: JobPlan, job_uid: str) -> dict[str, Any]:
    """Return the headless Service that names the Job's pods, owned by the Job."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": plan.name, "namespace": plan.namespace,
                     "labels": {"app.kubernetes.io/name": "shipyard", "app.kubernetes.io/component": "training"},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": plan.name,
                                          "uid": job_uid}]},
        "spec": {"clusterIP": "None", "selector": {JOB_LABEL: plan.name}, "publishNotReadyAddresses": True,
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}]},
    }


def params_json(params: Any) -> str:
    """Return the params as the compact JSON the pods read."""
    return json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def create(client: Client, plan: JobPlan) -> Job:
    """Create the Job, then its Service; a running Job of the same name is adopted, a finished one replaced."""
    what = f"create job {plan.namespace}/{plan.name}"
    try:
        with translate(what):
            job: Job = client.create(cast(Job, Job.from_dict(job_manifest(plan))))
    except KubeError as exc:
        if not isinstance(exc.__cause__, ApiError) or exc.__cause__.status.code != 409:
            raise
        job = read(client, plan.namespace, plan.name) or create(client, plan)
        if finished(job):
            log.info("job %s/%s is left from an earlier run; replacing it", plan.namespace, plan.name)
            delete(client, plan.namespace, plan.name, plan.pods.termination_grace_period_seconds)
            return create(client, plan)
        log.info("job %s/%s already runs; adopting it", plan.namespace, plan.name)
    assert job.metadata is not None and job.metadata.uid is not None
    try:
        with translate(f"create service {plan.namespace}/{plan.name}"):
            client.create(cast(Service, Service.from_dict(service_manifest(plan, job.metadata.uid))))
    except KubeError as exc:
        if not isinstance(exc.__cause__, ApiError) or exc.__cause__.status.code != 409:
            delete(client, plan.namespace, plan.name, 0)
            raise
    return job


def read(client: Client, namespace: str, name: str) -> Job | None:
    """Return the Job, or None if it is gone."""
    try:
        with translate(f"read job {namespace}/{name}"):
            job: Job = client.get(Job, name, namespace=namespace)
            return job
    except KubeError as exc:
        if isinstance(exc.__cause__, ApiError) and exc.__cause__.status.code == 404:
            return None
        raise


def condition(job: Job, kind: str) -> tuple[str, str] | None:
    """Return (reason, message) of the Job's condition ``kind`` ('Complete', 'Failed') if it is True."""
    for cond in (job.status.conditions or []) if job.status else []:
        if cond.type == kind and cond.status == "True":
            return cond.reason or kind, cond.message or ""
    return None


def finished(job: Job) -> bool:
    """Tell whether the Job completed or failed."""
    return condition(job, "Complete") is not None or condition(job, "Failed") is not None


def delete(client: Client, namespace: str, name: str, wait_seconds: float, poll: float = 0.5) -> None:
    """Delete the Job with its pods (foreground) and so its Service; wait up to ``wait_seconds`` for it to go."""
    try:
        with translate(f"delete job {namespace}/{name}"):
            client.delete(Job, name, namespace=namespace, cascade=CascadeType.FOREGROUND)
    except KubeError as exc:
        if not isinstance(exc.__cause__, ApiError) or exc.__cause__.status.code != 404:
            raise
    deadline = time.monotonic() + wait_seconds
    while read(client, namespace, name) is not None and time.monotonic() < deadline:
        time.sleep(poll)


@dataclass(frozen=True)
class PodFailure:
    """One failed pod of the Job, and whether its worker was lost rather than failing on its own."""

    pod: str
    index: str
    exit_code: int | None
    reason: str
    message: str
    finished_at: str
    lost: bool

    def describe(self) -> str:
        """Return one line naming the pod, its node index and how it ended."""
        code = f"exit code {self.exit_code}" if self.exit_code is not None else "no exit code"
        last = next((ln for ln in reversed(self.message.strip().splitlines()) if ln.strip()), "")
        return f"pod {self.pod} (node {self.index}) ended with {code} ({self.reason})" + (f": {last}" if last else "")


def pods(client: Client, namespace: str, name: str) -> list[Pod]:
    """Return the Job's pods."""
    with translate(f"list pods of job {namespace}/{name}"):
        return list(client.list(Pod, namespace=namespace, labels={"job-name": name}))


def failures(pod_list: list[Pod]) -> list[PodFailure]:
    """Return the failed or disrupted pods, earliest first: the first one is what ended the attempt."""
    found = []
    for pod in pod_list:
        meta, status = pod.metadata, pod.status
        if status is None or meta is None:
            continue
        disrupted = any(c.type == "DisruptionTarget" and c.status == "True" for c in status.conditions or [])
        if status.phase != "Failed" and not disrupted:
            continue
        term = next((s.state.terminated for s in status.containerStatuses or []
                     if s.name == CONTAINER and s.state and s.state.terminated), None)
        code = term.exitCode if term else None
        reason = (term.reason if term else None) or status.reason or ("DisruptionTarget" if disrupted else "Failed")
        message = (term.message if term else status.message) or ""
        lost = disrupted or term is None or code in LOST_EXIT_CODES or reason in LOST_REASONS \
            or any(error in message for error in RENDEZVOUS_ERRORS)
        annotations = meta.annotations or {}
        found.append(PodFailure(pod=meta.name or "?", index=annotations.get(INDEX_ANNOTATION, "?"), exit_code=code,
                                reason=reason, message=message,
                                finished_at=str(term.finishedAt) if term and term.finishedAt else "", lost=lost))
    # A pod with no termination record (node gone) and ties (same second) put a lost worker first: a peer
    # dying is what makes the others fail.
    return sorted(found, key=lambda f: (f.finished_at, not f.lost))
