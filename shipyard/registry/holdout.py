"""The frozen holdout: the rows challenger and champion are both evaluated on, in the same run.

By default it is the validation split of the dataset version the model's first champion was trained on,
split with that training's seed and validation fraction; it is recorded on the registered model (tag
``shipyard.holdout``) so every later gate uses the same rows. ``RegisterParams.holdout`` names another
version. Evaluation runs on the CPU with the challenger's recipe: its ``datasets`` reads the rows and its
``evaluate`` scores each model, whose weights come from its own training result in the store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from shipyard import datasets
from shipyard.errors import RegistryError
from shipyard.refs import DatasetRef
from shipyard.storage import Store
from shipyard.training import TrainContext, TrainResult, cached_result, load_model, load_recipe

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

TAG_HOLDOUT = "shipyard.holdout"
EVAL_BATCH = 512


class Holdout(BaseModel):
    """Which rows: the validation split of ``dataset`` under this seed and fraction."""

    model_config = ConfigDict(frozen=True)

    dataset: DatasetRef
    seed: int
    val_fraction: float

    def __str__(self) -> str:
        return f"{self.dataset} (validation split, seed {self.seed}, fraction {self.val_fraction})"


class HoldoutScores(BaseModel):
    """Each version's metrics on the same rows, and a digest of those rows."""

    holdout: Holdout
    rows: int
    rows_digest: str
    metrics: dict[str, dict[str, float]]


def holdout_for(recorded: str | None, chosen: DatasetRef | None, challenger: TrainResult) -> Holdout:
    """Return the holdout to use: the chosen version, else the recorded one, else the challenger's own data."""
    base = Holdout.model_validate_json(recorded) if recorded else None
    seed = base.seed if base else challenger.params.seed
    fraction = base.val_fraction if base else challenger.params.val_fraction
    dataset = chosen or (base.dataset if base else challenger.dataset)
    return Holdout(dataset=dataset, seed=seed, val_fraction=fraction)


def training_of(store: Store, train_key: str | None, what: str) -> TrainResult:
    """Return the training result a version was registered from (its ``shipyard.train_key`` tag)."""
    result = cached_result(store, train_key) if train_key else None
    if result is None:
        raise RegistryError(f"{what} has no training result in the store ({store.url('training', str(train_key))}); "
                            "it cannot be evaluated on the holdout")
    return result


def score(store: Store, cache: Path, holdout: Holdout, challenger: TrainResult,
          models: dict[str, TrainResult]) -> HoldoutScores:
    """Evaluate every model in ``models`` (version -> training) on the holdout rows, on the CPU."""
    import torch  # here, not at import: a gate that evaluates nothing (a cached rerun) needs no torch
    from torch.utils.data import DataLoader

    params = challenger.params.model_copy(update={"seed": holdout.seed, "val_fraction": holdout.val_fraction})
    recipe = load_recipe(params.entrypoint, params)
    data_dir = datasets.pull(store, holdout.dataset.name, holdout.dataset.version, cache)
    _, rows = recipe.datasets(data_dir)
    loader: DataLoader[Any] = DataLoader(rows, batch_size=EVAL_BATCH, shuffle=False)
    digest = hashlib.sha256()
    for batch in loader:
        for part in batch if isinstance(batch, list | tuple) else [batch]:
            if isinstance(part, torch.Tensor):
                digest.update(part.contiguous().numpy().tobytes())
    ctx = TrainContext(device=torch.device("cpu"), params=params)
    metrics = {}
    for version, trained in models.items():
        try:
            model = load_model(store, trained).to("cpu")
        except (RuntimeError, KeyError) as exc:
            raise RegistryError(f"version {version}: weights {trained.model_url} do not load into its recipe "
                                f"{trained.params.entrypoint} ({str(exc).splitlines()[0][:200]})") from exc
        metrics[version] = {k: float(v) for k, v in recipe.evaluate(model, loader, ctx).items()}
    return HoldoutScores(holdout=holdout, rows=len(rows), rows_digest=digest.hexdigest()[:16],  # type: ignore[arg-type]
                         metrics=metrics)
