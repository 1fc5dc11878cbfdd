"""What a pipeline run produced, in one structure the CLI and tests read."""

from __future__ import annotations

import json

from pydantic import BaseModel

from shipyard.datasets import Manifest
from shipyard.registry import Registration
from shipyard.rollout.base import RolloutResult
from shipyard.training import TrainResult


class PipelineResult(BaseModel):
    """The identifiers of everything one pipeline run touched."""

    dataset: str
    dataset_version: str
    train_key: str
    metrics: dict[str, float]
    model_name: str
    model_version: str
    champion_version: str
    promoted: bool
    mlflow_run_id: str
    mlflow_experiment_id: str
    endpoint: str
    served_version: str
    flow_run_id: str
    example: list[list[float]]

    @classmethod
    def build(cls, manifest: Manifest, trained: TrainResult, registration: Registration, rollout: RolloutResult,
              flow_run_id: str) -> PipelineResult:
        """Gather the identifiers from each stage's output."""
        return cls(
            dataset=manifest.dataset, dataset_version=manifest.version, train_key=trained.key,
            metrics=trained.metrics, model_name=registration.model_name, model_version=registration.version,
            champion_version=registration.champion_version, promoted=registration.promoted,
            mlflow_run_id=registration.run_id, mlflow_experiment_id=registration.experiment_id,
            endpoint=rollout.endpoint, served_version=rollout.model.version, flow_run_id=flow_run_id,
            example=registration.input_example[:1],
        )

    def curl(self) -> str:
        """Return a ready-to-paste curl line for one prediction."""
        body = json.dumps({"inputs": self.example}, separators=(",", ":"))
        return f"curl -s -X POST {self.endpoint}/invocations -H 'Content-Type: application/json' -d '{body}'"
