"""Training: the recipe protocol, the trainer loop, checkpoints, preemption and DDP on one or several nodes."""

from shipyard.training.loop import EpochMetrics
from shipyard.training.preemption import Preempted
from shipyard.training.recipe import Recipe, TrainContext, load_recipe
from shipyard.training.trainer import TrainResult, cached_result, load_model, train, training_key

__all__ = ["EpochMetrics", "Preempted", "Recipe", "TrainContext", "TrainResult", "cached_result", "load_model",
           "load_recipe", "train", "training_key"]
