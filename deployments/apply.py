"""Create the work pools and deployments of one environment on the current Prefect server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runner.storage import LocalStorage
from prefect.schedules import Cron, Schedule
from prefect.workers.process import ProcessWorker

from deployments import STAGED_BY, DeploymentSpec, for_environment
from shipyard.errors import ConfigError
from shipyard.settings import Settings, cluster_fields, redact

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_WORKDIR = Path("/opt/shipyard")  # WORKDIR of infra/docker/Dockerfile


def ensure_pool(name: str, pool_type: str, base_job_template: dict[str, Any]) -> None:
    """Create a work pool, or update its base job template if it exists."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=base_job_template))
            log.info("created %s work pool %s", pool_type, name)
        except ObjectAlreadyExists:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=base_job_template))


def _schedules(spec: DeploymentSpec, settings: Settings) -> list[Schedule] | None:
    """Create a row's schedule paused; once it exists, keep it as it is ('shipyard schedule' changes it)."""
    cron = spec.schedule_cron(settings)
    if cron is None:
        return None
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_deployment_by_name(spec.full_name).schedules
        except ObjectNotFound:
            existing = []
    kept = [Cron(s.schedule.cron, timezone=s.schedule.timezone, active=s.active) for s in existing
            if isinstance(s.schedule, CronSchedule)]
    return kept or [Cron(cron, timezone="UTC", active=False)]


def triggers(spec: DeploymentSpec) -> list[DeploymentEventTrigger]:
    """Return the Prefect triggers of a row (at most one)."""
    trigger = spec.trigger_spec()
    if trigger is None:
        return []
    return [DeploymentEventTrigger(name=f"{spec.full_name} on {trigger.event}", description=trigger.description,
                                   expect={trigger.event},
                                   match={"prefect.resource.id": trigger.resource, STAGED_BY: trigger.staged_by},
                                   parameters=trigger.parameters)]


def _deployment(spec: DeploymentSpec, settings: Settings, path: Path) -> RunnerDeployment:
    deployment = RunnerDeployment.from_entrypoint(
        str(REPO_ROOT / spec.entrypoint), name=spec.name, schedules=_schedules(spec, settings),
        description=spec.description, tags=list(spec.tags), work_pool_name=spec.work_pool(settings),
        job_variables=dict(spec.job_variables), triggers=list(triggers(spec)),
    )
    # The worker loads the entrypoint relative to this path: the checkout locally, the image's WORKDIR on EKS. As a
    # pull step (set_working_directory), not as the deployment's path: given a path and no pull steps, Prefect
    # copies that whole directory (the checkout with its virtualenv, gigabytes) into a fresh workspace per run.
    deployment.entrypoint = spec.entrypoint
    deployment.storage = LocalStorage(str(path))
    return deployment


def deploy_local(settings: Settings) -> list[str]:
    """Create the process work pool and the local deployments; return their names."""
    pool = settings.local_work_pool
    ensure_pool(pool, "process", ProcessWorker.get_default_base_job_template())
    names = []
    for spec in for_environment("local"):
        _deployment(spec, settings, REPO_ROOT).apply()
        names.append(spec.full_name)
    return names


def _cluster_pool_template(spec: DeploymentSpec) -> dict[str, Any]:
    from prefect_kubernetes.worker import KubernetesWorker

    from deployments import job_template

    if spec.job_template is not None:
        return job_template.load(spec.job_template)
    template: dict[str, Any] = KubernetesWorker.get_default_base_job_template()
    return template


# On a cluster both are fixed, whatever this machine uses: training goes to the GPU pool, and the rollout to the
# inference node group (a local target would serve inside the pipeline pod and die with it).
_CLUSTER_OVERRIDES = {"train_mode": "cluster", "rollout_target": "kubernetes"}
# Dedicated topology: the pipeline pod reads the inference cluster's kubeconfig from the Secret the pipeline job
# template mounts (deployments/templates/pipeline.json), not from this machine's path.
INFERENCE_KUBECONFIG_IN_POD = "/etc/shipyard/inference/config"


def cluster_env(settings: Settings) -> dict[str, str]:
    """Return the SHIPYARD_* variables cluster flow runs get (every CLUSTER setting), refusing credentials."""
    env: dict[str, str] = {}
    for name in cluster_fields():
        value = _CLUSTER_OVERRIDES.get(name, getattr(settings, name))
        if value is None:
            continue
        variable = f"SHIPYARD_{name.upper()}"
        if redact(str(value)) != str(value):
            raise ConfigError(f"{variable} carries credentials: job variables are visible in the Prefect UI, so "
                              "give pods credentials through IRSA or a Kubernetes secret instead")
        env[variable] = str(value)
    if settings.inference_kubeconfig or settings.inference_kube_context:
        env["SHIPYARD_INFERENCE_KUBECONFIG"] = INFERENCE_KUBECONFIG_IN_POD
        if settings.inference_kube_context:
            env["SHIPYARD_INFERENCE_KUBE_CONTEXT"] = settings.inference_kube_context
    return env


def cluster_job_variables(spec: DeploymentSpec, settings: Settings, env: dict[str, str]) -> dict[str, Any]:
    """Return the job variables of a cluster row: the image, namespace and settings pods need, then the row's."""
    return {"image": settings.image, "namespace": settings.kube_namespace, "env": env, **spec.job_variables}


def deploy_cluster(settings: Settings) -> list[str]:
    """Create the Kubernetes work pools and the cluster deployments; return their names."""
    env = cluster_env(settings)  # refuses credentials before anything is created
    names = []
    for spec in for_environment("cluster"):
        pool = spec.work_pool(settings)
        ensure_pool(pool, "kubernetes", _cluster_pool_template(spec))
        deployment = _deployment(spec, settings, IMAGE_WORKDIR)
        deployment.job_variables = cluster_job_variables(spec, settings, env)
        deployment.apply()
        names.append(spec.full_name)
    return names
