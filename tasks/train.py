"""Tasks: train in this process (or as torchrun workers on a multi-GPU node), or on the GPU work pool."""

from __future__ import annotations

import base64
import time
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import State
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, Cancelling, Failed

from shipyard import datasets, kube
from shipyard.errors import KubeError, TrainingError
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import Settings, load_settings
from shipyard.storage import Store, filesystem
from shipyard.training import TrainingPlan, TrainResult, load_recipe, plan_training, resolve_params
from shipyard.training.curves import curves_png
from shipyard.training.launch import train_once
from shipyard.training.trainer import launched_result
from tasks.retry import transient_only

# How often the pipeline looks at the training run it launched (and at the training pod's scheduling).
POLL_SECONDS = 3.0


def _plan(dataset: DatasetRef, params: TrainParams, force: bool, salt: str) -> tuple[Settings, Store, TrainingPlan]:
    """Return settings, store and the training plan: the key, and the finished result for it if there is one."""
    settings = load_settings()
    store = filesystem(settings)
    return settings, store, plan_training(store, dataset, params, force, salt)


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def fit_model(dataset: DatasetRef, params: TrainParams, force: bool = False) -> TrainResult:
    """Pull exactly the staged version, train (resuming from the newest checkpoint) and save the weights."""
    logger = get_run_logger()
    params = resolve_params(params)  # the recipe's own parameters fail here, before any data moves
    settings, store, plan = _plan(dataset, params, force, salt=str(flow_run.get_id() or ""))
    logger.info("%s", plan.reason)
    if plan.cached is not None:
        return plan.cached
    load_recipe(params.entrypoint, params)  # a bad entrypoint fails here, before any data moves
    result, elsewhere = train_once(
        store, dataset, params, plan.key, on_line=logger.info,
        pull=lambda: datasets.pull(store, dataset.name, dataset.version, settings.home / "cache" / "datasets"))
    if elsewhere:
        logger.info("cache hit: training %s was finished by another run while this one waited", plan.key)
    else:
        _publish(result)
    return result


def _publish(result: TrainResult) -> None:
    """Show the per-epoch metrics as a table and the curves as an image in the Prefect UI."""
    create_table_artifact(
        [{"epoch": h.epoch, "train_loss": round(h.train_loss, 5), **{k: round(v, 5) for k, v in h.metrics.items()}}
         for h in result.history],
        key="training-metrics", description=f"training {result.key} on {result.device}",
    )
    png = base64.b64encode(curves_png(result.history, title=f"training {result.key}")).decode()
    create_markdown_artifact(
        f"{summary(result)}\n\n![loss and accuracy](data:image/png;base64,{png})",
        key="training-curves", description="loss and accuracy per epoch",
    )


def summary(result: TrainResult) -> str:
    """Return the curves artifact's heading: device, nodes, processes, and throughput overall and per rank."""
    device = result.gpu or result.device
    lines = [f"### Training {result.key} on {device} ({result.nodes} node{'s' if result.nodes > 1 else ''}, "
             f"world size {result.world_size})", "", f"{result.samples_per_second:,.0f} samples/s"]
    if len(result.rank_samples_per_second) > 1:
        lines[-1] += "; per rank: " + ", ".join(f"{r}: {v:,.0f}" for r, v in enumerate(result.rank_samples_per_second))
    return "\n".join(lines)


@task(cache_policy=NO_CACHE)
def launch_training(dataset: DatasetRef, params: TrainParams, deployment: str, force: bool = False) -> TrainResult:
    """Run the train deployment (GPU work pool), wait for it, and return what it trained."""
    logger = get_run_logger()
    params = resolve_params(params)
    settings, store, plan = _plan(dataset, params, False, "")
    if plan.cached is not None and not force:
        logger.info("%s; not launching %s", plan.reason, deployment)
        return plan.cached
    parent = flow_run.get_id()
    try:
        child: Any = run_deployment(
            deployment, timeout=0, idempotency_key=f"{parent}-train-{plan.key}{'-force' if force else ''}",
            parameters={"dataset": dataset.model_dump(mode="json"), "training": params.model_dump(mode="json"),
                        "force": force})
    except ObjectNotFound as exc:
        raise TrainingError(f"deployment '{deployment}' not found on the Prefect server; apply the cluster "
                            "deployments first (deployments table in deployments/__init__.py)") from exc
    logger.info("launched %s run '%s' (%s); waiting for it", deployment, child.name, child.id)
    final = _wait_for(child.id, UUID(str(parent)) if parent else None, _scheduling_watch(settings, child.id, logger))
    if not final.is_completed():
        raise TrainingError(f"training run '{child.name}' of {deployment} ended {final.name}: {final.message}")
    return launched_result(store, plan, dataset, params, str(child.id), force, child.name)


def _scheduling_watch(settings: Settings, child_id: UUID, logger: Any) -> kube.SchedulingWatch | None:
    try:
        client = kube.client(settings.kube_namespace)
    except KubeError as exc:
        logger.warning("%s: a training pod that cannot be scheduled will not be detected", exc)
        return None
    return kube.SchedulingWatch(client, settings.kube_namespace, str(child_id))


def _wait_for(child_id: UUID, parent_id: UUID | None, watch: kube.SchedulingWatch | None) -> State[Any]:
    """Poll the child run until it ends; stop it if the pipeline is cancelled or its pod cannot be scheduled."""
    with get_client(sync_client=True) as client:
        try:
            while True:
                state = client.read_flow_run(child_id).state
                if state is not None and state.is_final():
                    return state
                if parent_id is not None and _is_cancelled(client, parent_id):
                    raise TrainingError(f"the pipeline run was cancelled; cancelled training run {child_id}")
                if watch is not None and (state is None or state.is_scheduled() or state.is_pending()):
                    watch.check()
                time.sleep(POLL_SECONDS)
        except KubeError as exc:
            client.set_flow_run_state(child_id, Failed(message=str(exc)), force=True)
            raise TrainingError(str(exc)) from exc
        except BaseException as exc:  # cancellation arrives as TerminationSignal or our own TrainingError
            _stop(client, child_id, f"the pipeline run stopped ({type(exc).__name__})")
            raise


def _is_cancelled(client: SyncPrefectClient, parent_id: UUID) -> bool:
    state = client.read_flow_run(parent_id).state
    return state is not None and (state.is_cancelling() or state.is_cancelled())


def _stop(client: SyncPrefectClient, child_id: UUID, why: str) -> None:
    """Cancel the child: at once if nothing runs it yet, else through its worker (which deletes the Job)."""
    state = client.read_flow_run(child_id).state
    if state is None or state.is_final():
        return
    started = state.is_running() or state.is_pending()
    client.set_flow_run_state(child_id, Cancelling(message=why) if started else Cancelled(message=why), force=True)
