"""Training: the recipe protocol, the trainer loop, checkpoints, preemption and DDP on one or several nodes."""

from shipyard.training.codehash import RecipeCode
from shipyard.training.loop import EpochMetrics
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

__all__ = ["EpochMetrics", "Preempted", "Recipe", "RecipeCode", "TrainContext", "TrainResult", "TrainingPlan",
           "cached_result", "load_model", "load_recipe", "plan_training", "resolve_params", "train", "training_key"]
