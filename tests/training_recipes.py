"""User recipes for the training tests, importable by entrypoint from test processes and subprocesses.

They stand for what a user brings: a module of their own, not shipyard.training.digits.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
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


class Curriculum(DigitsRecipe):
    """Digits with label smoothing for its first steps, counted in the checkpointed recipe state.

    The count lives only in ``ctx.state`` (not ``ctx.step``), so a resumed run trains like an uninterrupted
    one only if the trainer restores that state: otherwise smoothing restarts and the weights differ.
    """

    smooth_steps = 40
    sigterm_at_step: int | None = None
    armed = True  # once per arming, as SigtermAtStep

    def training_step(self, model: nn.Module, batch: Any, ctx: TrainContext) -> torch.Tensor:
        if ctx.step == self.sigterm_at_step and Curriculum.armed:
            Curriculum.armed = False
            os.kill(os.getpid(), signal.SIGTERM)
        seen = ctx.state.get("seen", 0)
        ctx.state["seen"] = seen + 1
        x, y = (t.to(ctx.device) for t in batch)
        smoothing = 0.3 if seen < self.smooth_steps else 0.0
        return nn.functional.cross_entropy(model(x), y, label_smoothing=smoothing)


class CurriculumSigterm(Curriculum):
    """The curriculum recipe, evicted by SIGTERM in the middle of step 30 (epoch 2)."""

    sigterm_at_step = 30


def curriculum(params: TrainParams) -> Curriculum:
    """Entrypoint of the curriculum recipe."""
    return Curriculum(params)


def curriculum_sigterm(params: TrainParams) -> CurriculumSigterm:
    """Entrypoint of the curriculum recipe that evicts itself once."""
    return CurriculumSigterm(params)


class Evicted(Exception):
    """What a test's SIGTERM handler raises, as Prefect's engine bridge raises TerminationSignal."""


@contextmanager
def evicting(*recipes: Any) -> Iterator[None]:
    """Make SIGTERM raise :class:`Evicted` and arm ``recipes`` (their ``armed`` flag) to send it mid-training."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Evicted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    for recipe in recipes:
        recipe.armed = True
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
