"""The train flow: deployable on its own (the gpu-train work pool), called in-process by the pipeline."""

# No `from __future__ import annotations` here: a runner or worker loads this file by path and builds the
# parameter model from the annotations, which must then be real classes (TrainParams), not strings.
from prefect import flow
from prefect.runtime import flow_run

from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.runnames import train_run_name
from shipyard.settings import TrainMode, load_settings
from shipyard.training import TrainResult
from tasks.multinode import train_across_nodes
from tasks.train import fit_model, launch_training

# The row of deployments/__init__.py that runs this flow on the gpu-train Kubernetes work pool.
TRAIN_DEPLOYMENT = "train-flow/cluster"


def _run_name() -> str:
    return train_run_name(flow_run.parameters)


@flow(log_prints=True, flow_run_name=_run_name)
def train_flow(dataset: DatasetRef, training: TrainParams = TrainParams(), force: bool = False) -> TrainResult:  # noqa: B008
    """Train a model on one staged dataset version.

    1. Pull exactly that dataset version from the store (local cache keyed by content hash).
    2. Train on every visible GPU (one torchrun worker each when there are several), else the CPU,
       checkpointing to the store; on SIGTERM checkpoint first; a restarted run resumes from the newest checkpoint.
    3. Save the weights, per-epoch metrics and curves (a finished run of the same data, params and recipe code
       is never repeated, unless `force`).
    With nodes > 1, steps 1-2 run in the pods of an Indexed Job on the train node group instead (a lost worker
    fails the attempt; the next attempt resumes from the newest checkpoint).
    """
    if training.nodes > 1:
        return train_across_nodes(dataset, training, force)
    return fit_model(dataset, training, force)


def run_training(dataset: DatasetRef, training: TrainParams, deployment: str = TRAIN_DEPLOYMENT,
                 force: bool = False) -> TrainResult:
    """Train where the settings say: in this process (local), or as the train deployment on the GPU pool (cluster).

    Several nodes (``training.nodes > 1``) are launched as an Indexed Job from here, without a pod in between.
    """
    if load_settings().train_mode is TrainMode.cluster and training.nodes == 1:
        return launch_training(dataset, training, deployment, force)
    return train_flow(dataset, training, force)
