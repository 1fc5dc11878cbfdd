"""The trainer's public face: train a recipe on a dataset version, resuming from the newest checkpoint.

Prefect-free; the same function runs in-process on one machine, inside the cluster's training pod, and
in each torchrun worker when a node has several GPUs (see :mod:`shipyard.training.distributed`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

import shipyard
from shipyard.errors import TrainingError
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.storage import Store
from shipyard.training.codehash import RecipeCode, recipe_code
from shipyard.training.metrics import EpochCallback, EpochMetrics
from shipyard.training.recipe import load_recipe, validate_recipe_params

if TYPE_CHECKING:  # torch, the loop and DDP load when a model is trained or loaded: a cached run needs none
    import torch

    from shipyard.training.distributed import World
    from shipyard.training.loop import Loop

log = logging.getLogger(__name__)

__all__ = ["EpochMetrics", "TrainResult", "TrainingPlan", "cached_result", "inputs_key", "load_model",
           "plan_training", "resolve_params", "train", "training_key"]


class TrainResult(BaseModel):
    """What training produced: enough for the register stage to log and register the model."""

    key: str
    dataset: DatasetRef
    params: TrainParams
    code: RecipeCode
    device: str
    gpu: str | None
    world_size: int = 1
    history: list[EpochMetrics]
    metrics: dict[str, float]
    samples_per_second: float
    resumed_from_step: int | None
    model_url: str
    nodes: int = 1  # training pods (Indexed Job) the world spanned; world_size counts processes
    rank_samples_per_second: list[float] = Field(default_factory=list)  # each rank's own throughput, rank order

    def model_parts(self) -> tuple[str, ...]:
        """Return the store path parts of the trained weights."""
        return (*training_prefix(self.key), "model.pt")


def inputs_key(dataset: DatasetRef, params: TrainParams) -> str:
    """Return the id of a training's inputs without its code: data, params and Shipyard's version."""
    blob = json.dumps([dataset.name, dataset.version, params.model_dump(mode="json"), shipyard.__version__],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_key(dataset: DatasetRef, params: TrainParams, code_hash: str | None = None, salt: str = "") -> str:
    """Return the id of a training run: same data, params, Shipyard version and recipe code, same key.

    ``code_hash`` defaults to the hash of the entrypoint's code now; ``salt`` is empty except for a forced
    retraining, which gets a key of its own.
    """
    code_hash = code_hash or recipe_code(params.entrypoint).hash
    blob = json.dumps([inputs_key(dataset, params), code_hash, salt])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TrainingPlan(BaseModel):
    """Whether a training must run, and why: what the log says before training or skipping."""

    key: str
    inputs_key: str
    code: RecipeCode
    cached: TrainResult | None
    reason: str


def launched_result(store: Store, plan: TrainingPlan, dataset: DatasetRef, params: TrainParams, run_id: str,
                    force: bool, run_name: str) -> TrainResult:
    """Return what a launched training run wrote; a forced run trains under a key salted with its own run id."""
    key = training_key(dataset, params, plan.code.hash, salt=run_id) if force else plan.key
    result = cached_result(store, key)
    if result is None:
        raise TrainingError(f"training run '{run_name}' completed but {store.url('training', key)} has no result")
    return result


def resolve_params(params: TrainParams) -> TrainParams:
    """Validate the recipe's own parameters and fill in their defaults, so equal runs get equal keys.

    The validated values always replace the given ones: ``{"dropout": 0}`` equals ``{"dropout": 0.0}`` in Python
    but not in the key's JSON, so keeping a given dict because it compares equal gave equal runs two keys.
    """
    full = validate_recipe_params(params.entrypoint, params.recipe_params)
    return params.model_copy(update={"recipe_params": full})


def plan_training(store: Store, dataset: DatasetRef, params: TrainParams, force: bool = False,
                  salt: str = "") -> TrainingPlan:
    """Find a finished training of the same data, params and code; else say what changed since the last one."""
    code = recipe_code(params.entrypoint)
    inputs = inputs_key(dataset, params)
    if force:
        key = training_key(dataset, params, code.hash, salt or "force")
        return TrainingPlan(key=key, inputs_key=inputs, code=code, cached=cached_result(store, key),
                            reason=f"cache bypassed: force=True; training afresh as {key}")
    key = training_key(dataset, params, code.hash)
    cached = cached_result(store, key)
    if cached is not None:
        reason = f"cache hit: same data, params and code (training {key})"
    else:
        last = _last_code_hash(store, inputs)
        if last is not None and last != code.hash:
            reason = f"cache miss: recipe code changed ({last[:8]}... -> {code.hash[:8]}...)"
        else:
            reason = f"cache miss: no finished training of {dataset} with these params and code"
    return TrainingPlan(key=key, inputs_key=inputs, code=code, cached=cached, reason=reason)


def _last_code_hash(store: Store, inputs: str) -> str | None:
    """Return the code hash of the last finished training of these inputs (any code), if any."""
    if not store.exists(*_index_parts(inputs)):
        return None
    return str(json.loads(store.read_bytes(*_index_parts(inputs)))["code_hash"])


def _index_parts(inputs: str) -> tuple[str, ...]:
    # training/inputs/<inputs key>.json: the last finished training of these data and params, whatever the code.
    return ("training", "inputs", f"{inputs}.json")


def training_prefix(key: str) -> tuple[str, ...]:
    """Return the store prefix of a training run's artifacts."""
    return ("training", key)


def checkpoint_prefix(key: str) -> tuple[str, ...]:
    """Return the store prefix of a training run's checkpoints."""
    return (*training_prefix(key), "checkpoints")


def cached_result(store: Store, key: str) -> TrainResult | None:
    """Return the result of a finished training run with this key, if the store has one."""
    parts = (*training_prefix(key), "result.json")
    if not store.exists(*parts):
        return None
    return TrainResult.model_validate_json(store.read_bytes(*parts))


def load_model(store: Store, result: TrainResult) -> torch.nn.Module:
    """Rebuild the recipe's model and load the trained weights from the store."""
    import torch

    recipe = load_recipe(result.params.entrypoint, result.params)
    model = recipe.build_model()
    state = torch.load(io.BytesIO(store.read_bytes(*result.model_parts())), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def train(store: Store, dataset: DatasetRef, params: TrainParams, data_dir: Path,
          on_epoch: EpochCallback | None = None, key: str | None = None) -> TrainResult:
    """Train ``params.entrypoint`` on a pulled dataset version, resuming from the newest checkpoint.

    ``key`` defaults to the training key of these inputs and code (a forced run passes its own). On SIGTERM
    the run writes a checkpoint and then lets the signal act (see :mod:`shipyard.training.preemption`);
    calling this again resumes where it stopped.
    """
    from shipyard.training.distributed import barrier, gather_over_ranks, join, leave
    from shipyard.training.loop import Loop

    code = recipe_code(params.entrypoint)
    key = key or training_key(dataset, params, code.hash)
    recipe = load_recipe(params.entrypoint, params)
    world = join()
    try:
        loop = Loop(store, checkpoint_prefix(key), params, recipe, data_dir, world)
        loop.resume()
        loop.run(on_epoch)
        rates = gather_over_ranks(world, _rank_rate(loop))
        if world.is_main:
            _save_result(store, key, dataset, params, code, loop, world, rates)
        barrier(world)
        result = cached_result(store, key)
    finally:
        leave(world)
    assert result is not None  # written by the main process before the barrier
    log.info("training %s finished: %s", key, result.metrics)
    return result


def _ran(loop: Loop) -> list[EpochMetrics]:
    """Return the epochs this process trained (not those restored from a checkpoint)."""
    return [h for h in loop.history if loop.resumed_from is None or h.step > loop.resumed_from]


def _rank_rate(loop: Loop) -> float:
    """Return this rank's own samples per second over the epochs it trained."""
    ran = _ran(loop)
    return sum(h.samples for h in ran) / loop.world.size / (sum(h.seconds for h in ran) or 1e-9)


def _save_result(store: Store, key: str, dataset: DatasetRef, params: TrainParams, code: RecipeCode, loop: Loop,
                 world: World, rates: list[float]) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in loop.model.state_dict().items()}, buffer)
    store.write_bytes(buffer.getvalue(), *training_prefix(key), "model.pt")
    ran = _ran(loop)
    seconds = sum(h.seconds for h in ran) or 1e-9
    result = TrainResult(
        key=key, dataset=dataset, params=params, code=code, device=world.device.type,
        gpu=torch.cuda.get_device_name(world.device) if world.device.type == "cuda" else None,
        world_size=world.size, history=loop.history,
        metrics=loop.history[-1].metrics if loop.history else {},
        samples_per_second=sum(h.samples for h in ran) / seconds,
        resumed_from_step=loop.resumed_from, model_url=store.url(*training_prefix(key), "model.pt"),
        nodes=params.nodes, rank_samples_per_second=rates,
    )
    # Written last: its presence is what marks this training run as finished (the cache key).
    store.write_bytes(result.model_dump_json(indent=2).encode(), *training_prefix(key), "result.json")
    # Then the index that lets the next run of the same data and params say whether the code changed.
    index = {"key": key, "code_hash": code.hash}
    store.write_bytes(json.dumps(index).encode(), *_index_parts(inputs_key(dataset, params)))
