"""What a pipeline run produced, in one structure the CLI and tests read."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from shipyard.refs import DatasetRef
from shipyard.registry import Registration
from shipyard.rollout.base import RolloutResult
from shipyard.training import TrainResult


class PipelineResult(BaseModel):
    """The identifiers of everything one pipeline run touched."""

    dataset: DatasetRef
    train_key: str
    metrics: dict[str, float]
    model_name: str
    model_version: str
    champion_version: str | None
    promoted: bool
    gate_outcome: str
    gate_reason: str
    mlflow_run_id: str
    mlflow_experiment_id: str
    endpoint: str | None = Field(description="None when nothing was rolled out (the version is not champion).")
    served_version: str | None
    flow_run_id: str
    example: list[list[float]]

    @classmethod
    def build(cls, trained: TrainResult, registration: Registration, rollout: RolloutResult | None,
              flow_run_id: str) -> PipelineResult:
        """Gather the identifiers from each stage's output (``rollout`` None: nothing was rolled out)."""
        return cls(
            dataset=trained.dataset, train_key=trained.key,
            metrics=trained.metrics, model_name=registration.model_name, model_version=registration.version,
            champion_version=registration.champion_version, promoted=registration.promoted,
            gate_outcome=registration.decision.outcome, gate_reason=registration.decision.reason,
            mlflow_run_id=registration.run_id, mlflow_experiment_id=registration.experiment_id,
            endpoint=rollout.endpoint if rollout else None,
            served_version=rollout.model.version if rollout else None,
            flow_run_id=flow_run_id, example=registration.input_example[:1],
        )

    @property
    def rolled_out(self) -> bool:
        """Tell whether this run served a model (False when the gate kept the old champion)."""
        return self.endpoint is not None

    def curl(self) -> str:
        """Return a ready-to-paste curl line for one prediction ('' when nothing was rolled out)."""
        if self.endpoint is None:
            return ""
        body = json.dumps({"inputs": self.example}, separators=(",", ":"))
        return f"curl -s -X POST {self.endpoint}/invocations -H 'Content-Type: application/json' -d '{body}'"
