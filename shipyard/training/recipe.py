"""The training-recipe protocol: how users plug their own model into the trainer.

An entrypoint ``package.module:function`` names a function that takes the run's
:class:`~shipyard.params.TrainParams` (and, if the recipe has parameters of its own, a second argument
annotated with their pydantic model, filled from ``TrainParams.recipe_params``) and returns a
:class:`Recipe`. The trainer owns the loop
(device, precision, loader, optimizer, checkpoints, preemption, DDP, metrics); the recipe owns the model,
the data and the loss. It sees the run through a :class:`TrainContext`. See ``docs/training.md`` and
``shipyard/training/digits.py``, the built-in example.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from shipyard.errors import ConfigError, TrainingError
from shipyard.params import TrainParams

if TYPE_CHECKING:  # torch is imported where a model is built or trained, not to name a recipe or check its params
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset


@dataclass
class TrainContext:
    """What a recipe sees of the run: where it is, and where its metrics and extra state go.

    ``state`` is saved in every checkpoint and restored on resume: keep in it anything of the recipe's
    own that must survive preemption (counters, an EMA of the weights as tensors). ``log`` records a
    per-step scalar; its per-epoch mean is reported with the epoch's metrics and logged to MLflow.
    """

    device: torch.device
    params: TrainParams
    rank: int = 0
    world_size: int = 1
    epoch: int = 0  # epochs fully completed
    step: int = 0  # optimizer steps taken in total
    state: dict[str, Any] = field(default_factory=dict)
    _sums: dict[str, tuple[float | torch.Tensor, int]] = field(default_factory=dict, repr=False)

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Record a scalar for this step; the epoch reports the mean of what was logged."""
        import torch  # already loaded: the value came from a model

        if isinstance(value, torch.Tensor):
            value = value.detach().float()  # summed on the device: no host sync per step
        total, count = self._sums.get(name, (0.0, 0))
        self._sums[name] = (total + value, count + 1)

    def epoch_means(self) -> dict[str, float]:
        """Return the means of the scalars logged since the last call, and start afresh."""
        means = {name: float(total) / count for name, (total, count) in self._sums.items() if count}
        self._sums.clear()
        return means


@runtime_checkable
class Recipe(Protocol):
    """What a user's entrypoint returns."""

    def build_model(self) -> nn.Module:
        """Return a freshly initialised model (the trainer seeds the RNGs first)."""
        ...

    def datasets(self, data_dir: Path) -> tuple[Dataset[Any], Dataset[Any]]:
        """Return (train, validation) datasets read from the pulled dataset version in ``data_dir``."""
        ...

    def training_step(self, model: nn.Module, batch: Any, ctx: TrainContext) -> torch.Tensor:
        """Return the loss of one batch (the trainer runs backward and the optimizer)."""
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader[Any], ctx: TrainContext) -> dict[str, float]:
        """Return validation metrics; higher-is-better metrics are used for promotion."""
        ...

    def input_example(self) -> np.ndarray:
        """Return an input example with a batch of at least 2, for the model signature."""
        ...

    def serving_model(self, model: nn.Module) -> nn.Module:
        """Return the module to register and serve (for example the model followed by softmax)."""
        ...


# Spelled out: typing's protocol introspection (__protocol_attrs__) only exists from Python 3.12.
RECIPE_METHODS = ("build_model", "datasets", "training_step", "evaluate", "input_example", "serving_model")


def _factory(entrypoint: str) -> Callable[..., Any]:
    module_name, _, func_name = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainingError(
            f"entrypoint '{entrypoint}': cannot import module '{module_name}' ({exc}); "
            "is the package installed in the training image?") from exc
    factory: Callable[..., Any] | None = getattr(module, func_name, None)
    if not callable(factory):
        raise TrainingError(f"entrypoint '{entrypoint}': module '{module_name}' has no function '{func_name}'")
    return factory


def recipe_params_model(entrypoint: str) -> type[BaseModel] | None:
    """Return the pydantic model of the recipe's own parameters: the entrypoint's second argument's type."""
    factory = _factory(entrypoint)
    try:
        hints = typing.get_type_hints(factory)
    except (NameError, TypeError) as exc:
        raise TrainingError(f"entrypoint '{entrypoint}': cannot resolve its type hints ({exc})") from exc
    names = [n for n in inspect.signature(factory).parameters][1:2]
    model = hints.get(names[0]) if names else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def validate_recipe_params(entrypoint: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` against the recipe's model; return it complete (defaults filled in), as JSON values."""
    model = recipe_params_model(entrypoint)
    if model is None:
        if raw:
            raise ConfigError(f"parameter training.recipe_params: entrypoint '{entrypoint}' declares no parameters "
                              f"of its own, but got {', '.join(sorted(raw))}")
        return {}
    try:
        return model.model_validate(raw).model_dump(mode="json")
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("training", "recipe_params", *err["loc"]))
        raise ConfigError(f"parameter {where}: {err['msg']} ({model.__name__} of {entrypoint})") from exc


def check_data(params: TrainParams, schemas: dict[str, dict[str, str]]) -> None:
    """Ask the recipe whether it can train on tables with ``schemas`` (group -> column -> type), if it can tell.

    A recipe may define ``check_schemas(schemas)`` raising DatasetError; then a source it cannot read fails
    before it is staged, not after.
    """
    check = getattr(load_recipe(params.entrypoint, params), "check_schemas", None)
    if callable(check):
        check(schemas)


def load_recipe(entrypoint: str, params: TrainParams) -> Recipe:
    """Import ``module:function`` and build the recipe, naming the entrypoint on any failure."""
    factory = _factory(entrypoint)
    model = recipe_params_model(entrypoint)
    if model is not None:
        recipe = factory(params, model.model_validate(validate_recipe_params(entrypoint, params.recipe_params)))
    else:
        validate_recipe_params(entrypoint, params.recipe_params)
        recipe = factory(params)
    if not isinstance(recipe, Recipe):
        missing = [m for m in RECIPE_METHODS if not callable(getattr(recipe, m, None))]
        raise TrainingError(
            f"entrypoint '{entrypoint}' returned a {type(recipe).__name__} without {', '.join(sorted(missing))} "
            "(see docs/training.md for the recipe protocol)")
    return recipe
