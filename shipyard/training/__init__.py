"""Training: the recipe protocol, the trainer loop, checkpoints, preemption and DDP on one or several nodes.

Names load on first use (PEP 562): reading a cached result or naming a recipe imports no torch; training does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shipyard.training.codehash import RecipeCode
    from shipyard.training.metrics import EpochMetrics
    from shipyard.training.preemption import Preempted
    from shipyard.training.recipe import Recipe, TrainContext, load_recipe
    from shipyard.training.trainer import (
        TrainingPlan,
        TrainResult,
        cached_result,
        load_model,
        plan_training,
        resolve_params,
        train,
        training_key,
    )

_HOMES = {
    "RecipeCode": "codehash", "EpochMetrics": "metrics", "Preempted": "preemption", "Recipe": "recipe",
    "TrainContext": "recipe", "load_recipe": "recipe", "TrainingPlan": "trainer", "TrainResult": "trainer",
    "cached_result": "trainer", "load_model": "trainer", "plan_training": "trainer", "resolve_params": "trainer",
    "train": "trainer", "training_key": "trainer",
}
__all__ = ["EpochMetrics", "Preempted", "Recipe", "RecipeCode", "TrainContext", "TrainResult", "TrainingPlan",
           "cached_result", "load_model", "load_recipe", "plan_training", "resolve_params", "train", "training_key"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shipyard.training' has no attribute '{name}'")
    return getattr(importlib.import_module(f"shipyard.training.{home}"), name)
