"""The train flow: deployable on its own (the gpu-train work pool), called in-process by the pipeline."""

from __future__ import annotations

from prefect import flow

from shipyard.params import TrainParams
from shipyard.training import TrainResult
from tasks.train import fit_model


@flow(log_prints=True)
def train_flow(dataset: str, dataset_version: str, training: TrainParams = TrainParams()) -> TrainResult:  # noqa: B008
    """Train a model on one staged dataset version.

    1. Pull exactly that dataset version from the store (local cache keyed by content hash).
    2. Train, checkpointing to the store; a restarted run resumes from the newest checkpoint.
    3. Save the weights and per-epoch metrics to the store (a finished run is never repeated).
    """
    return fit_model(dataset, dataset_version, training)
