"""The training-recipe protocol: how users plug their own model into the trainer.

An entrypoint ``package.module:function`` names a function that takes the run's
:class:`~shipyard.params.TrainParams` and returns a :class:`Recipe`. The trainer owns the loop
(device, precision, loader, optimizer, checkpoints, metrics); the recipe owns the model, the data and
the loss. See ``shipyard/training/digits.py`` for the built-in example.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shipyard.errors import TrainingError
from shipyard.params import TrainParams


@runtime_checkable
class Recipe(Protocol):
    """What a user's entrypoint returns."""

    def build_model(self) -> nn.Module:
        """Return a freshly initialised model (the trainer seeds the RNGs first)."""
        ...

    def datasets(self, data_dir: Path) -> tuple[Dataset[Any], Dataset[Any]]:
        """Return (train, validation) datasets read from the pulled dataset version in ``data_dir``."""
        ...

    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """Return the loss of one batch (the trainer runs backward and the optimizer)."""
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device) -> dict[str, float]:
        """Return validation metrics; higher-is-better metrics are used for promotion."""
        ...

    def input_example(self) -> np.ndarray:
        """Return an input example with a batch of at least 2, for the model signature."""
        ...

    def serving_model(self, model: nn.Module) -> nn.Module:
        """Return the module to register and serve (for example the model followed by softmax)."""
        ...


def load_recipe(entrypoint: str, params: TrainParams) -> Recipe:
    """Import ``module:function`` and build the recipe, naming the entrypoint on any failure."""
    module_name, _, func_name = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainingError(f"entrypoint '{entrypoint}': cannot import module '{module_name}' ({exc})") from exc
    factory: Callable[[TrainParams], Any] | None = getattr(module, func_name, None)
    if not callable(factory):
        raise TrainingError(f"entrypoint '{entrypoint}': module '{module_name}' has no function '{func_name}'")
    recipe = factory(params)
    if not isinstance(recipe, Recipe):
        missing = [m for m in Recipe.__protocol_attrs__ if not hasattr(recipe, m)]  # type: ignore[attr-defined]
        raise TrainingError(f"entrypoint '{entrypoint}' returned a {type(recipe).__name__} without {', '.join(sorted(missing))}")
    return recipe
