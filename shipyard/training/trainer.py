"""The trainer: device, precision, loader, optimizer, checkpoints and per-epoch metrics.

Prefect-free; the same function runs in-process on one machine and inside the cluster's training pod.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import DataLoader

import shipyard
from shipyard.errors import TrainingError
from shipyard.params import TrainParams
from shipyard.storage import Store
from shipyard.training import checkpoint
from shipyard.training.recipe import Recipe, load_recipe

log = logging.getLogger(__name__)

EpochCallback = Callable[["EpochMetrics"], None]


class EpochMetrics(BaseModel):
    """Metrics of one finished epoch."""

    epoch: int
    step: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    samples: int


class TrainResult(BaseModel):
    """What training produced: enough for the register stage to log and register the model."""

    key: str
    dataset: str
    dataset_version: str
    params: TrainParams
    device: str
    gpu: str | None
    history: list[EpochMetrics]
    metrics: dict[str, float]
    samples_per_second: float
    resumed_from_step: int | None
    model_url: str

    def model_parts(self) -> tuple[str, ...]:
        """Return the store path parts of the trained weights."""
        return training_prefix(self.key) + ("model.pt",)


def training_key(dataset: str, version: str, params: TrainParams) -> str:
    """Return the id of a training run: same data, params and Shipyard version, same key."""
    blob = json.dumps([dataset, version, params.model_dump(mode="json"), shipyard.__version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_prefix(key: str) -> tuple[str, ...]:
    """Return the store prefix of a training run's artifacts."""
    return ("training", key)


def best_device() -> torch.device:
    """Return CUDA when present, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def cached_result(store: Store, key: str) -> TrainResult | None:
    """Return the result of a finished training run with this key, if the store has one."""
    parts = training_prefix(key) + ("result.json",)
    if not store.exists(*parts):
        return None
    return TrainResult.model_validate_json(store.read_bytes(*parts))


def load_model(store: Store, result: TrainResult) -> torch.nn.Module:
    """Rebuild the recipe's model and load the trained weights from the store."""
    recipe = load_recipe(result.params.entrypoint, result.params)
    model = recipe.build_model()
    state = torch.load(io.BytesIO(store.read_bytes(*result.model_parts())), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def validate_for_data(params: TrainParams, train_size: int) -> None:
    """Fail before training if the params cannot work with this data."""
    if train_size == 0:
        raise TrainingError("the training split is empty (dataset too small for val_fraction)")
    if params.batch_size > train_size:
        raise TrainingError(f"batch_size {params.batch_size} is larger than the training split ({train_size} rows)")


class _Loop:
    """One training run's state; split out so each phase stays short."""

    def __init__(self, store: Store, key: str, params: TrainParams, recipe: Recipe, data_dir: Path) -> None:
        self.store, self.key, self.params, self.recipe = store, key, params, recipe
        self.device = best_device()
        seed_everything(params.seed)
        train_set, val_set = recipe.datasets(data_dir)
        validate_for_data(params, len(train_set))  # type: ignore[arg-type]
        pin = self.device.type == "cuda"
        self.train_set = train_set
        self.val_loader = DataLoader(val_set, batch_size=max(params.batch_size, 256), pin_memory=pin)
        self.model = recipe.build_model().to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=params.epochs)
        self.epoch = self.step = 0
        self.history: list[EpochMetrics] = []
        self.resumed_from: int | None = None

    @property
    def ckpt_prefix(self) -> tuple[str, ...]:
        return training_prefix(self.key) + ("checkpoints",)

    def loader(self, epoch: int) -> DataLoader[Any]:
        # A per-epoch generator makes the shuffle order a function of (seed, epoch), so a resumed
        # run sees exactly the batches an uninterrupted one would.
        gen = torch.Generator().manual_seed(self.params.seed * 100_003 + epoch)
        return DataLoader(self.train_set, batch_size=self.params.batch_size, shuffle=True, generator=gen,
                          pin_memory=self.device.type == "cuda", drop_last=False)

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "history": [h.model_dump() for h in self.history],
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def resume(self) -> None:
        found = checkpoint.latest(self.store, self.ckpt_prefix)
        if found is None:
            return
        s = found.state
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.history = [EpochMetrics.model_validate(h) for h in s["history"]]
        torch.set_rng_state(s["rng"]["torch"])
        np.random.set_state(s["rng"]["numpy"])
        random.setstate(s["rng"]["python"])
        if s["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        self.epoch, self.step, self.resumed_from = found.epoch, found.step, found.step
        log.info("resuming training %s from checkpoint at epoch %d, step %d", self.key, self.epoch, self.step)

    def save(self) -> None:
        checkpoint.save(self.store, self.ckpt_prefix, self.epoch, self.step, self.state())

    def autocast(self) -> Any:
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def run_epoch(self, on_epoch: EpochCallback | None) -> None:
        started, losses, samples = time.perf_counter(), [], 0
        steps_per_epoch = len(self.loader(self.epoch))
        skip = self.step - self.epoch * steps_per_epoch  # batches already done before a mid-epoch resume
        self.model.train()
        for index, batch in enumerate(self.loader(self.epoch)):
            if index < skip:
                continue
            with self.autocast():
                loss = self.recipe.training_step(self.model, batch, self.device)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {float(loss)} at step {self.step} (try a lower learning_rate)")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            losses.append(float(loss.detach()))
            samples += len(batch[0]) if isinstance(batch, list | tuple) else self.params.batch_size
            every = self.params.checkpoint_every_steps
            if every and self.step % every == 0 and index + 1 < steps_per_epoch:
                self.save()
        self.scheduler.step()
        self.model.eval()
        metrics = self.recipe.evaluate(self.model, self.val_loader, self.device)
        self.epoch += 1
        entry = EpochMetrics(epoch=self.epoch, step=self.step, train_loss=float(np.mean(losses)) if losses else 0.0,
                             metrics=metrics, seconds=time.perf_counter() - started, samples=samples)
        self.history.append(entry)
        self.save()
        if on_epoch:
            on_epoch(entry)


def train(store: Store, dataset: str, version: str, params: TrainParams, data_dir: Path,
          on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train ``params.entrypoint`` on a pulled dataset version, resuming from the newest checkpoint."""
    key = training_key(dataset, version, params)
    recipe = load_recipe(params.entrypoint, params)
    loop = _Loop(store, key, params, recipe, data_dir)
    loop.resume()
    while loop.epoch < params.epochs:
        loop.run_epoch(on_epoch)
    buffer = io.BytesIO()
    torch.save(loop.model.to("cpu").state_dict(), buffer)
    store.write_bytes(buffer.getvalue(), *training_prefix(key), "model.pt")
    seconds = sum(h.seconds for h in loop.history) or 1e-9
    result = TrainResult(
        key=key, dataset=dataset, dataset_version=version, params=params, device=loop.device.type,
        gpu=torch.cuda.get_device_name(0) if loop.device.type == "cuda" else None, history=loop.history,
        metrics=loop.history[-1].metrics if loop.history else {},
        samples_per_second=sum(h.samples for h in loop.history) / seconds,
        resumed_from_step=loop.resumed_from, model_url=store.url(*training_prefix(key), "model.pt"),
    )
    # Written last: its presence is what marks this training run as finished (the cache key).
    store.write_bytes(result.model_dump_json(indent=2).encode(), *training_prefix(key), "result.json")
    log.info("training %s finished: %s", key, result.metrics)
    return result
