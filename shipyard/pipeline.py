"""What a pipeline run produced, in one structure the CLI and tests read; and whether a run has anything to do."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from shipyard.params import DatasetParams, RegisterParams, RolloutParams, TrainParams
from shipyard.refs import DatasetRef
from shipyard.registry import Registration
from shipyard.rollout.base import ModelRef, RolloutResult
from shipyard.settings import Settings
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
    flow_run_id: str | None = Field(description="None when no flow ran: every step was already done.")
    example: list[list[float]]

    @classmethod
    def build(cls, trained: TrainResult, registration: Registration, rollout: RolloutResult | None,
              flow_run_id: str | None) -> PipelineResult:
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


def up_to_date(settings: Settings, dataset: DatasetParams, training: TrainParams, registry: RegisterParams,
               rollout: RolloutParams, force: bool = False) -> PipelineResult | None:
    """Return what a run with these parameters would report if every step found its work done, else None.

    Each step asks, reading only, the question its task asks before doing anything: is this source already
    a staged version, is there a finished training with this key, which version was registered from it, is
    that version ``champion``, does the target serve it. The first "no" returns None (the pipeline has work
    to do). The stage step hashes the source through the local hash cache; nothing else is written anywhere.
    ``rollout`` is taken so a caller can pass a run's parameters whole: it changes nothing for a version that
    already serves (a rerun's rollout takes no smoke test).
    """
    from shipyard import datasets
    from shipyard import registry as models
    from shipyard import rollout as targets
    from shipyard.datasets.demo import resolve_source
    from shipyard.rollout.champion import already_serving
    from shipyard.storage import filesystem
    from shipyard.training import plan_training, resolve_params

    if force:
        return None
    target = targets.target(settings)
    live = target.live()  # asked first, as the cheapest: on a fresh home nothing serves, and nothing else is read
    if live is None or live.model.model_name != registry.model_name:
        return None
    store = filesystem(settings)
    if dataset.version is not None:
        manifest: datasets.Manifest | None = datasets.load_staged(store, dataset.name, dataset.version)
    else:
        manifest = datasets.find_staged(store, dataset.name, resolve_source(dataset.source, settings.home),
                                        hash_cache=settings.hash_cache())
    if manifest is None:
        return None
    ref = DatasetRef(name=manifest.dataset, version=manifest.version)
    trained = plan_training(store, ref, resolve_params(training)).cached
    if trained is None:
        return None
    client = models.client(settings)
    registered = models.registered_version(client, registry.model_name, trained)
    registration = None if registered is None else models.already_champion(client, registered, registry.metric)
    if registration is None:
        return None
    champion = ModelRef(model_name=registration.model_name, version=registration.version)
    served = already_serving(client, target, champion)
    if served is None:
        return None
    return PipelineResult.build(trained, registration, served, None)
