"""The pipeline flow: stage -> train -> register -> roll out."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.transactions import transaction

from flows.train import run_training
from shipyard.params import DatasetParams, DatasetRef, RegisterParams, RolloutParams, TrainParams
from shipyard.pipeline import PipelineResult
from shipyard.rollout.base import ModelRef
from shipyard.runnames import pipeline_run_name
from tasks.register import await_approval, register_model
from tasks.rollout import hold_champion, roll_out
from tasks.stage import stage_dataset


def _run_name() -> str:
    return pipeline_run_name(flow_run.parameters)


@flow(flow_run_name=_run_name)
def pipeline_flow(
    dataset: DatasetParams = DatasetParams(),  # noqa: B008 - frozen pydantic defaults are safe
    training: TrainParams = TrainParams(),  # noqa: B008
    registry: RegisterParams = RegisterParams(),  # noqa: B008
    rollout: RolloutParams = RolloutParams(),  # noqa: B008
    force: bool = False,
) -> PipelineResult:
    """Take data to a live endpoint; each step skips work it already finished.

    1. Stage: copy the source to the store as an immutable, content-addressed dataset version
       (or use `dataset.version`, already staged).
    2. Train: train the model on exactly that version, checkpointing to the store (`force` retrains).
    3. Register: log the run to MLflow with lineage, register a version, evaluate it and the champion on the
       same holdout; it becomes `champion` only if it passes the thresholds and beats it by the margin
       (and, if asked, someone approves), else `challenger`.
    4. Roll out: load the champion beside the live version, check its answers against MLflow's, switch;
       on failure the old version keeps serving and `champion` goes back to it (one transaction).
       Skipped for a challenger.
    """
    manifest = stage_dataset(dataset)
    trained = run_training(DatasetRef(name=manifest.dataset, version=manifest.version), training, force=force)
    served = None
    with transaction():
        hold_champion(registry.model_name)
        registration = register_model(trained, registry)
        if registration.decision.outcome == "awaiting-approval":
            registration = register_model(trained, registry, await_approval(registration, registry))
        if registration.is_champion and registration.champion_version is not None:
            champion = ModelRef(model_name=registration.model_name, version=registration.champion_version)
            served = roll_out(champion, registration.input_example, rollout)
    return PipelineResult.build(trained, registration, served, str(flow_run.get_id()))
