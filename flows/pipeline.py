"""The pipeline flow: stage -> train -> register -> roll out."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.train import run_training
from shipyard.params import DatasetParams, RegisterParams, RolloutParams, TrainParams
from shipyard.pipeline import PipelineResult
from shipyard.runnames import pipeline_run_name
from tasks.register import register_model
from tasks.rollout import roll_out
from tasks.stage import stage_dataset


def _run_name() -> str:
    return pipeline_run_name(flow_run.parameters)


@flow(flow_run_name=_run_name)
def pipeline_flow(
    dataset: DatasetParams = DatasetParams(),  # noqa: B008 - frozen pydantic defaults are safe
    training: TrainParams = TrainParams(),  # noqa: B008
    registry: RegisterParams = RegisterParams(),  # noqa: B008
    rollout: RolloutParams = RolloutParams(),  # noqa: B008
) -> PipelineResult:
    """Take data to a live endpoint; each step skips work it already finished.

    1. Stage: copy the source to the store as an immutable, content-addressed dataset version.
    2. Train: train the model on exactly that version, checkpointing to the store.
    3. Register: log the run to MLflow with lineage, register a version, promote it to `champion` if it wins.
    4. Roll out: serve the champion, smoke-test one prediction, roll back on failure.
    """
    manifest = stage_dataset(dataset)
    trained = run_training(dataset.name, manifest.version, training)
    registration = register_model(trained, registry)
    served = roll_out(registration, rollout)
    return PipelineResult.build(manifest, trained, registration, served, str(flow_run.get_id()))
