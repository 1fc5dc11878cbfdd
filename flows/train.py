"""The train flow: deployable on its own (the gpu-train work pool), called in-process by the pipeline."""

# No `from __future__ import annotations` here: a runner or worker loads this file by path and builds the
# parameter model from the annotations, which must then be real classes (TrainParams), not strings.
from prefect import flow
from prefect.runtime import flow_run

from shipyard.params import TrainParams
from shipyard.runnames import train_run_name
from shipyard.settings import TrainMode, load_settings
from shipyard.training import TrainResult
from tasks.train import fit_model, launch_training

# The row of deployments/__init__.py that runs this flow on the gpu-train Kubernetes work pool.
TRAIN_DEPLOYMENT = "train-flow/cluster"


def _run_name() -> str:
    return train_run_name(flow_run.parameters)


@flow(log_prints=True, flow_run_name=_run_name)
def train_flow(dataset: str, dataset_version: str, training: TrainParams = TrainParams()) -> TrainResult:  # noqa: B008
    """Train a model on one staged dataset version.

    1. Pull exactly that dataset version from the store (local cache keyed by content hash).
    2. Train on every visible GPU (one torchrun worker each when there are several), else the CPU,
       checkpointing to the store; on SIGTERM checkpoint first; a restarted run resumes from the newest checkpoint.
    3. Save the weights, per-epoch metrics and curves (a finished run is never repeated).
    """
    return fit_model(dataset, dataset_version, training)


def run_training(dataset: str, dataset_version: str, training: TrainParams,
                 deployment: str = TRAIN_DEPLOYMENT) -> TrainResult:
    """Train where the settings say: in this process (local), or as the train deployment on the GPU pool (cluster)."""
    if load_settings().train_mode is TrainMode.cluster:
        return launch_training(dataset, dataset_version, training, deployment)
    return train_flow(dataset, dataset_version, training)
