"""The deployment table: every Prefect deployment Shipyard creates, named ``<flow-name>/<environment>``.

``deployments.apply`` turns rows of this table into work pools and deployments on a Prefect server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.settings import Settings


@dataclass(frozen=True)
class DeploymentSpec:
    """One row: which flow, in which environment, on which work pool, on what schedule."""

    entrypoint: str
    environment: str
    pool_setting: str = field(metadata={"help": "name of the Settings field holding the work pool"})
    description: str
    cron: str | None = None
    job_template: str | None = None  # base job template in deployments/templates/ for the pool
    job_variables: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def flow_name(self) -> str:
        """Return the flow name Prefect derives from the function name."""
        return self.entrypoint.rsplit(":", 1)[1].replace("_", "-")

    @property
    def full_name(self) -> str:
        """Return ``<flow-name>/<environment>``."""
        return f"{self.flow_name}/{self.environment}"

    def work_pool(self, settings: Settings) -> str:
        """Return the work pool name from the settings."""
        return str(getattr(settings, self.pool_setting))


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec("flows/pipeline.py:pipeline_flow", "local", "local_work_pool",
                   "The whole pipeline on this machine (Run button in the local Prefect UI).", tags=("local",)),
    DeploymentSpec("flows/train.py:train_flow", "local", "local_work_pool",
                   "Training alone on this machine.", tags=("local",)),
    DeploymentSpec("flows/rollout.py:rollout_flow", "local", "local_work_pool",
                   "Serve a chosen model version on this machine (champion moves with it; undone on failure).",
                   tags=("local",)),
    DeploymentSpec("flows/pipeline.py:pipeline_flow", "cluster", "pipeline_work_pool",
                   "The whole pipeline on EKS, nightly at 02:00 UTC; training goes to the gpu-train pool.",
                   cron="0 2 * * *", tags=("cluster",), job_template="pipeline",
                   # The pipeline pod launches and watches training Jobs: the worker's RBAC (infra/k8s/base.yaml).
                   job_variables={"service_account_name": "prefect-worker"}),
    DeploymentSpec("flows/train.py:train_flow", "cluster", "train_work_pool",
                   "Training on the EKS train node group's GPUs (launched by pipeline-flow/cluster).",
                   job_template="gpu-train", tags=("cluster", "gpu")),
)


def for_environment(environment: str) -> list[DeploymentSpec]:
    """Return the rows of one environment."""
    return [d for d in DEPLOYMENTS if d.environment == environment]
