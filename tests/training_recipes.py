"""User recipes for the training tests, importable by entrypoint from test processes and subprocesses.

They stand for what a user brings: a module of their own, not shipyard.training.digits.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch
from torch import nn

from shipyard.params import TrainParams
from shipyard.training import TrainContext
from shipyard.training.digits import DigitsRecipe


class CountingRecipe(DigitsRecipe):
    """Digits with a linear model that logs its own metric and keeps a counter in the checkpointed state."""

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 10))

    def training_step(self, model: nn.Module, batch: Any, ctx: TrainContext) -> torch.Tensor:
        x, y = (t.to(ctx.device) for t in batch)
        logits = model(x)
        ctx.log("train_accuracy", (logits.argmax(1) == y).float().mean())
        ctx.state["steps_seen"] = ctx.state.get("steps_seen", 0) + 1
        return nn.functional.cross_entropy(logits, y)


def counting(params: TrainParams) -> CountingRecipe:
    """Entrypoint of the counting recipe."""
    return CountingRecipe(params)


class SigtermAtStep(DigitsRecipe):
    """Digits that sends itself SIGTERM in the middle of a given step, like a kubelet evicting the pod."""

    at_step = 30
    armed = True  # once per arming: the resumed run must get past the step

    def training_step(self, model: nn.Module, batch: Any, ctx: TrainContext) -> torch.Tensor:
        if ctx.step == self.at_step and SigtermAtStep.armed:
            SigtermAtStep.armed = False
            os.kill(os.getpid(), signal.SIGTERM)
        return super().training_step(model, batch, ctx)


def sigterm_at_step(params: TrainParams) -> SigtermAtStep:
    """Entrypoint of the self-terminating recipe."""
    return SigtermAtStep(params)


class Slow(DigitsRecipe):
    """Digits with a pause per step, so a test process can be signalled mid-epoch."""

    def training_step(self, model: nn.Module, batch: Any, ctx: TrainContext) -> torch.Tensor:
        time.sleep(0.01)
        return super().training_step(model, batch, ctx)


def slow(params: TrainParams) -> Slow:
    """Entrypoint of the slow recipe."""
    return Slow(params)


class NotARecipe:
    """Has a model but nothing else."""

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1)


def not_a_recipe(params: TrainParams) -> NotARecipe:
    """An entrypoint that returns the wrong thing."""
    return NotARecipe()
