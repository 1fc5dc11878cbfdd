"""The deployment table: every Prefect deployment Shipyard creates, named ``<flow-name>/<environment>``.

``deployments.apply`` turns rows of this table into work pools and deployments on a Prefect server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.settings import Settings


@dataclass(frozen=True)
class DeploymentSpec:
    """One row: which flow, in which environment, on which work pool, on what schedule or event."""

    entrypoint: str
    environment: str
    pool_setting: str = field(metadata={"help": "name of the Settings field holding the work pool"})
    description: str
    cron: str | None = None  # every schedule is created paused: 'shipyard schedule resume' turns it on
    cron_setting: str | None = None  # name of the Settings field holding the cron, instead of a fixed one
    trigger: str | None = None  # an event in TRIGGERS that starts a run, with parameters taken from the event
    variant: str | None = None  # tells apart two deployments of one flow in one environment
    job_template: str | None = None  # base job template in deployments/templates/ for the pool
    job_variables: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def flow_name(self) -> str:
        """Return the flow name Prefect derives from the function name."""
        return self.entrypoint.rsplit(":", 1)[1].replace("_", "-")

    @property
    def name(self) -> str:
        """Return the deployment name: the environment, plus the variant if there is one."""
        return self.environment if self.variant is None else f"{self.environment}-{self.variant}"

    @property
    def full_name(self) -> str:
        """Return ``<flow-name>/<environment>`` (``<flow-name>/<environment>-<variant>`` for a variant)."""
        return f"{self.flow_name}/{self.name}"

    def work_pool(self, settings: Settings) -> str:
        """Return the work pool name from the settings."""
        return str(getattr(settings, self.pool_setting))

    def schedule_cron(self, settings: Settings) -> str | None:
        """Return the cron of this deployment's schedule (UTC), if it has one."""
        return str(getattr(settings, self.cron_setting)) if self.cron_setting else self.cron

    def trigger_spec(self) -> EventTrigger | None:
        """Return the event trigger of this deployment, if it has one."""
        return None if self.trigger is None else TRIGGERS[self.trigger]


@dataclass(frozen=True)
class EventTrigger:
    """Start a run when an event arrives; ``parameters`` are Jinja templates over the event (Prefect's syntax)."""

    event: str
    resource: str  # prefect.resource.id pattern; a trailing '*' matches any suffix
    staged_by: str  # value of the STAGED_BY resource label to react to
    parameters: dict[str, Any]
    description: str


# Event names and payloads: tasks/events.py emits them.
DATASET_STAGED = "shipyard.dataset.staged"
DATASET_RESOURCE = "shipyard.dataset."  # + dataset name
STAGED_BY = "shipyard.staged-by"  # resource label: 'command' (shipyard data stage) or 'pipeline' (its stage step)

TRIGGERS: dict[str, EventTrigger] = {
    "new-data": EventTrigger(
        # Not versions a pipeline staged: that pipeline trains on them itself.
        event=DATASET_STAGED, resource=DATASET_RESOURCE + "*", staged_by="command",
        # Exactly the version that was staged: the pipeline uses it instead of staging a source.
        parameters={"dataset": {"name": "{{ event.payload.dataset }}", "version": "{{ event.payload.version }}"}},
        description="'shipyard data stage' staged a new version of a dataset.",
    ),
}


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec("flows/pipeline.py:pipeline_flow", "local", "local_work_pool",
                   "The whole pipeline on this machine (Run button in the local Prefect UI); its schedule "
                   "(SHIPYARD_LOCAL_PIPELINE_CRON) starts paused: 'shipyard schedule resume' turns it on.",
                   cron_setting="local_pipeline_cron", tags=("local",)),
    DeploymentSpec("flows/pipeline.py:pipeline_flow", "local", "local_work_pool",
                   "Retrain on this machine when a new dataset version is staged: the pipeline on exactly "
                   "that version (train, register, roll out).", trigger="new-data", variant="new-data",
                   tags=("local", "event")),
    DeploymentSpec("flows/train.py:train_flow", "local", "local_work_pool",
                   "Training alone on this machine.", tags=("local",)),
    DeploymentSpec("flows/rollout.py:rollout_flow", "local", "local_work_pool",
                   "Serve a chosen model version on this machine (champion moves with it; undone on failure).",
                   tags=("local",)),
    DeploymentSpec("flows/pipeline.py:pipeline_flow", "cluster", "pipeline_work_pool",
                   "The whole pipeline on EKS, nightly at 02:00 UTC (created paused: 'shipyard schedule resume "
                   "pipeline-flow/cluster' turns it on); training goes to the gpu-train pool.",
                   cron="0 2 * * *", tags=("cluster",), job_template="pipeline",
                   # The pipeline pod launches and watches training Jobs: the worker's RBAC (infra/k8s/base.yaml).
                   job_variables={"service_account_name": "prefect-worker"}),
    DeploymentSpec("flows/train.py:train_flow", "cluster", "train_work_pool",
                   "Training on the EKS train node group's GPUs (launched by pipeline-flow/cluster).",
                   job_template="gpu-train", tags=("cluster", "gpu")),
    DeploymentSpec("flows/pipeline.py:pipeline_flow", "cluster", "pipeline_work_pool",
                   "Retrain on EKS when a new dataset version is staged: the pipeline on exactly that version.",
                   trigger="new-data", variant="new-data", tags=("cluster", "event"), job_template="pipeline",
                   job_variables={"service_account_name": "prefect-worker"}),
    DeploymentSpec("flows/rollout.py:rollout_flow", "cluster", "pipeline_work_pool",
                   "Serve a chosen model version on EKS, with the pipeline's smoke test and automatic rollback.",
                   tags=("cluster",), job_template="pipeline",
                   job_variables={"service_account_name": "prefect-worker"}),
)


def for_environment(environment: str) -> list[DeploymentSpec]:
    """Return the rows of one environment."""
    return [d for d in DEPLOYMENTS if d.environment == environment]
