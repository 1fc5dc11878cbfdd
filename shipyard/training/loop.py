"""One training run's loop: batches, steps, checkpoints, preemption and per-epoch metrics."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, TensorDataset

from shipyard.errors import TrainingError
from shipyard.params import TrainParams
from shipyard.storage import Store
from shipyard.training import checkpoint
from shipyard.training.distributed import World, any_rank, mean_over_ranks
from shipyard.training.metrics import EpochCallback, EpochMetrics
from shipyard.training.preemption import PreemptionGuard
from shipyard.training.recipe import Recipe, TrainContext

log = logging.getLogger(__name__)

# In DDP every rank must agree on when to stop; asking costs a collective, so ask every few steps.
DDP_STOP_CHECK_EVERY = 8

__all__ = ["EpochCallback", "EpochMetrics", "Loop", "seed_everything", "validate_for_data"]


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed Python, NumPy and torch; on CPU also insist on deterministic kernels.

    On CUDA, deterministic kernels cost throughput (and need CUBLAS_WORKSPACE_CONFIG), so GPU runs are
    seeded but not bit-reproducible; the resume-equals-uninterrupted guarantee is proven on CPU.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(device.type == "cpu")


def validate_for_data(params: TrainParams, train_size: int, world_size: int = 1) -> None:
    """Fail before training if the params cannot work with this data."""
    if train_size == 0:
        raise TrainingError("the training split is empty (dataset too small for val_fraction)")
    if params.batch_size > train_size:
        raise TrainingError(f"batch_size {params.batch_size} is larger than the training split ({train_size} rows); "
                            "lower batch_size")
    if params.batch_size < world_size:
        raise TrainingError(f"batch_size {params.batch_size} is smaller than the {world_size} training processes")


class Batches:
    """Per-epoch batches whose order is a function of (seed, epoch), so a resumed run sees the same ones."""

    def __init__(self, dataset: Dataset[Any], params: TrainParams, world: World) -> None:
        self.dataset, self.params, self.world = dataset, params, world
        self.size = len(dataset)  # type: ignore[arg-type]
        self.pin = world.device.type == "cuda"
        full, rest = divmod(self.size, params.batch_size)
        # Under DDP every rank must take every step: drop a last batch too small to give each rank a row.
        self.steps_per_epoch = full + (1 if rest and rest >= world.size else 0)

    def epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        """Yield this rank's share of each global batch of ``epoch``, after the first ``skip`` batches."""
        gen = torch.Generator().manual_seed(self.params.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=gen)
        batches = torch.split(order, self.params.batch_size)[skip:self.steps_per_epoch]
        shares = [b[self.world.rank::self.world.size] for b in batches]
        if isinstance(self.dataset, TensorDataset):
            # Index the tensors once per batch instead of collating row by row.
            for idx in shares:
                batch = [t[idx] for t in self.dataset.tensors]
                yield [t.pin_memory() for t in batch] if self.pin else batch
        else:
            yield from DataLoader(self.dataset, batch_sampler=[s.tolist() for s in shares], pin_memory=self.pin)


def _batch_len(batch: Any, default: int) -> int:
    if isinstance(batch, list | tuple) and batch and hasattr(batch[0], "__len__"):
        return len(batch[0])
    return default


class Loop:
    """One training run's state; split out so each phase stays short."""

    def __init__(self, store: Store, prefix: tuple[str, ...], params: TrainParams, recipe: Recipe,
                 data_dir: Path, world: World) -> None:
        self.store, self.prefix, self.params, self.recipe, self.world = store, prefix, params, recipe, world
        self.device = world.device
        seed_everything(params.seed, self.device)
        train_set, val_set = recipe.datasets(data_dir)
        validate_for_data(params, len(train_set), world.size)  # type: ignore[arg-type]
        self.batches = Batches(train_set, params, world)
        self.val_loader = DataLoader(val_set, batch_size=max(params.batch_size, 256),
                                     pin_memory=self.device.type == "cuda")
        self.ctx = TrainContext(device=self.device, params=params, rank=world.rank, world_size=world.size)
        self.model = recipe.build_model().to(self.device)
        self.forward: torch.nn.Module = self.model if world.size == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=params.learning_rate,
                                           weight_decay=params.weight_decay, fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=params.epochs)
        self.epoch = self.step = 0
        self.history: list[EpochMetrics] = []
        self.resumed_from: int | None = None
        self.guard = PreemptionGuard()

    def state(self) -> dict[str, Any]:
        """Return everything a resumed run needs to continue exactly where this one is."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "history": [h.model_dump() for h in self.history],
            "recipe_state": self.ctx.state,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def resume(self) -> None:
        """Load the newest valid checkpoint, if there is one."""
        found = checkpoint.latest(self.store, self.prefix)
        if found is None:
            return
        s = found.state
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.history = [EpochMetrics.model_validate(h) for h in s["history"]]
        self.ctx.state = s.get("recipe_state", {})
        torch.set_rng_state(s["rng"]["torch"])
        np.random.set_state(s["rng"]["numpy"])
        random.setstate(s["rng"]["python"])
        if s["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])
        self.epoch, self.step, self.resumed_from = found.epoch, found.step, found.step
        self.ctx.epoch, self.ctx.step = self.epoch, self.step
        log.info("resuming from checkpoint at epoch %d, step %d in %s", self.epoch, self.step,
                 self.store.url(*self.prefix))

    def save(self, reason: str) -> str:
        """Write a checkpoint from the main process; return its URL."""
        if not self.world.is_main:
            return self.store.url(*self.prefix)
        return checkpoint.save(self.store, self.prefix, self.epoch, self.step, self.state(), reason=reason)

    def autocast(self) -> Any:
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _stop_requested(self) -> bool:
        if self.world.size == 1:
            return self.guard.requested
        if self.step % DDP_STOP_CHECK_EVERY:
            return False
        return any_rank(self.world, self.guard.requested)

    def _preempt(self) -> None:
        url = self.save("preempted")
        self.guard.deliver(f"checkpoint at epoch {self.epoch}, step {self.step} in {url}")

    def run(self, on_epoch: EpochCallback | None) -> None:
        """Train the remaining epochs, checkpointing on schedule and on SIGTERM."""
        with self.guard:
            while self.epoch < self.params.epochs:
                self.run_epoch(on_epoch)

    def run_epoch(self, on_epoch: EpochCallback | None) -> None:
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        count = samples = 0
        skip = self.step - self.epoch * self.batches.steps_per_epoch  # batches done before a mid-epoch resume
        every = self.params.checkpoint_every_steps
        self.forward.train()
        for batch in self.batches.epoch(self.epoch, skip):
            with self.autocast():
                loss = self.recipe.training_step(self.forward, batch, self.ctx)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            self.step += 1
            self.ctx.step = self.step
            loss_sum += loss.detach().float()  # stays on the device: no host sync per step
            count += 1
            samples += _batch_len(batch, self.params.batch_size)
            if self._stop_requested():
                self._preempt()
            if every and self.step % every == 0 and skip + count < self.batches.steps_per_epoch:
                self.save("scheduled")
        self.scheduler.step()
        self.finish_epoch(on_epoch, started, float(loss_sum) / max(count, 1), samples)

    def finish_epoch(self, on_epoch: EpochCallback | None, started: float, train_loss: float, samples: int) -> None:
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became {train_loss} in epoch {self.epoch + 1} "
                                f"(try a lower learning_rate than {self.params.learning_rate})")
        train_loss = mean_over_ranks(self.world, train_loss)
        metrics = self.ctx.epoch_means()
        if self.world.is_main:
            self.model.eval()
            metrics.update(self.recipe.evaluate(self.model, self.val_loader, self.ctx))
        self.epoch += 1
        self.ctx.epoch = self.epoch
        entry = EpochMetrics(epoch=self.epoch, step=self.step, train_loss=train_loss, metrics=metrics,
                             seconds=time.perf_counter() - started, samples=samples * self.world.size)
        self.history.append(entry)
        self.save("epoch")
        if on_epoch and self.world.is_main:
            on_epoch(entry)
