"""Train across several nodes: one Indexed Job per attempt, a lost worker ends the attempt, the next resumes.

Each attempt is a fresh Job (:mod:`shipyard.kube.indexed`) named after the training key and the attempt
number, so a relaunch of the same run adopts a Job that still runs instead of starting a second one. The
launcher polls the Job and its pods: Complete ends the run; the first pod to fail decides what failed.
A worker that was lost (killed, OOM, preempted, its node gone) deletes the Job and starts the next attempt,
whose ranks all resume from the newest complete checkpoint (written by rank 0 only, checksummed). A worker
that failed on its own (bad params, a bug) fails the run with its pod's last output line. A pod that stays
unschedulable fails the run with the scheduler's reason (:class:`shipyard.kube.SchedulingWatch`). Whatever
interrupts the launcher (cancellation, SIGTERM, Ctrl-C) deletes the Job, and so its pods and Service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lightkube import Client

from shipyard.errors import ConfigError, TrainingError
from shipyard.kube import indexed
from shipyard.kube.scheduling import SHIPYARD_RUN_LABEL, SchedulingWatch
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import Settings, redact
from shipyard.storage import Store
from shipyard.training.trainer import TrainResult, cached_result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """Where the training Jobs go and how closely they are watched."""

    client: Client
    namespace: str
    image: str
    env: dict[str, str] = field(default_factory=dict)  # SHIPYARD_* the pods need (the store)
    pods: indexed.PodResources = field(default_factory=indexed.PodResources)
    attempts: int = 3
    poll_seconds: float = 3.0


def pod_env(settings: Settings) -> dict[str, str]:
    """Return the settings the training pods need, refusing a store URI with credentials in it."""
    if not settings.store_uri:
        raise ConfigError("training on several nodes needs a store every pod reaches: set SHIPYARD_STORE_URI "
                          "(an s3:// URI on EKS)")
    if redact(settings.store_uri) != settings.store_uri:
        raise ConfigError("SHIPYARD_STORE_URI carries credentials, which would show in the Job manifest; give "
                          "the pods credentials through IRSA or a Kubernetes secret instead")
    return {"SHIPYARD_STORE_URI": settings.store_uri}


def job_name(key: str, attempt: int) -> str:
    """Return the Job (and Service) name of one attempt of a training run."""
    return f"train-{key}-{attempt}"


@dataclass(frozen=True)
class Ended:
    """How one attempt ended: completed, or the failure that ended it."""

    completed: bool
    failure: indexed.PodFailure | None = None
    why: str = ""

    @property
    def retry(self) -> bool:
        """Tell whether a new attempt may succeed: a worker was lost rather than failing on its own."""
        return self.failure is not None and self.failure.lost


def train_on_nodes(cluster: Cluster, store: Store, dataset: DatasetRef, params: TrainParams, run_id: str,
                   key: str, on_line: Callable[[str], None] = log.info) -> TrainResult:
    """Train on ``params.nodes`` pods under training ``key``, starting a new attempt when a worker is lost."""
    watch = SchedulingWatch(cluster.client, cluster.namespace, run_id, label=SHIPYARD_RUN_LABEL)
    last = ""
    for attempt in range(1, cluster.attempts + 1):
        plan = indexed.JobPlan(
            name=job_name(key, attempt), namespace=cluster.namespace, image=cluster.image, run_id=run_id,
            dataset=dataset.name, version=dataset.version, params_json=indexed.params_json(params),
            nodes=params.nodes, procs_per_node=params.procs_per_node, env=cluster.env, pods=cluster.pods, key=key)
        ended = _attempt(cluster, plan, watch, on_line)
        if ended.completed:
            break
        last = ended.failure.describe() if ended.failure else ended.why
        if not ended.retry:
            raise TrainingError(f"training job {plan.namespace}/{plan.name} failed: {last}")
        on_line(f"attempt {attempt}/{cluster.attempts} lost a worker: {last}; the next attempt resumes "
                "from the newest checkpoint")
    else:
        raise TrainingError(f"training {key} lost a worker in each of {cluster.attempts} attempts; last: {last}")
    result = cached_result(store, key)
    if result is None:
        raise TrainingError(f"training job {plan.namespace}/{plan.name} completed but wrote no result under "
                            f"{store.url('training', key)}")
    return result


def _attempt(cluster: Cluster, plan: indexed.JobPlan, watch: SchedulingWatch,
             on_line: Callable[[str], None]) -> Ended:
    """Run one attempt to its end; delete its Job unless it completed (and whenever interrupted)."""
    grace = plan.pods.termination_grace_period_seconds + 30
    try:
        indexed.create(cluster.client, plan)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # interrupted while creating (Ctrl-C, a cancellation): the Job may exist
            _stop(cluster, plan)
        raise  # an error: create removed what it had made
    try:
        on_line(f"started job {plan.namespace}/{plan.name}: {plan.nodes} pods x {plan.procs_per_node} processes, "
                f"rendezvous at {plan.node_args().rdzv_endpoint}")
        while True:
            ended = _look(cluster, plan)
            if ended is not None:
                break
            watch.check()  # raises KubeError with the scheduler's reason (and deletes the Job)
            time.sleep(cluster.poll_seconds)
    except BaseException:
        _stop(cluster, plan)
        raise
    if not ended.completed:
        # Wait for the pods to go: a terminating rank 0 must not write a checkpoint the next attempt skips.
        indexed.delete(cluster.client, plan.namespace, plan.name, grace)
    return ended


def _stop(cluster: Cluster, plan: indexed.JobPlan) -> None:
    log.warning("stopping: deleting job %s/%s with its pods and service", plan.namespace, plan.name)
    indexed.delete(cluster.client, plan.namespace, plan.name, 0)


def _look(cluster: Cluster, plan: indexed.JobPlan) -> Ended | None:
    """Return how the attempt ended, or None while it runs."""
    job = indexed.read(cluster.client, plan.namespace, plan.name)
    if job is None:
        gone = indexed.PodFailure(plan.name, "*", None, "JobDeleted", "deleted from outside Shipyard", "", False)
        return Ended(False, gone)
    if indexed.condition(job, "Complete"):
        return Ended(True)
    failed = indexed.failures(indexed.pods(cluster.client, plan.namespace, plan.name))
    if failed:
        return Ended(False, failed[0])
    job_failed = indexed.condition(job, "Failed")
    if job_failed:
        return Ended(False, why=f"{job_failed[0]}: {job_failed[1]}")
    return None
