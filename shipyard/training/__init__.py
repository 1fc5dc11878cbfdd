"""Training: the recipe protocol, the trainer loop and checkpoints in the store."""

from shipyard.training.recipe import Recipe, load_recipe
from shipyard.training.trainer import EpochMetrics, TrainResult, cached_result, load_model, train, training_key

__all__ = ["EpochMetrics", "Recipe", "TrainResult", "cached_result", "load_model", "load_recipe", "train", "training_key"]
