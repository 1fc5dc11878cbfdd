"""The built-in example recipe: an MLP classifier for the bundled handwritten digits (8x8 pixels)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import DatasetError
from shipyard.params import TrainParams

if TYPE_CHECKING:  # torch is imported by the methods that use it: naming the recipe or its example needs none
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    from shipyard.training.recipe import TrainContext

FEATURES = [f"pixel_{i}" for i in range(64)]
_NUMERIC = re.compile(r"(u?int\d+|float|double|halffloat|decimal)")
LABEL = "label"
# The first two of scikit-learn's bundled digits (a 0 and a 1), pixel intensities 0-16, written out: reading
# them from scikit-learn costs a cached run about a second of imports (a unit test checks they still match).
EXAMPLE_DIGITS = (
    (0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
     0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0),
    (0, 0, 0, 12, 13, 5, 0, 0, 0, 0, 0, 11, 16, 9, 0, 0, 0, 0, 3, 15, 16, 6, 0, 0, 0, 7, 15, 16, 16, 2, 0, 0,
     0, 0, 1, 16, 16, 3, 0, 0, 0, 0, 1, 16, 16, 6, 0, 0, 0, 0, 1, 16, 16, 6, 0, 0, 0, 0, 0, 11, 16, 10, 0, 0),
)


class DigitsRecipe:
    """Train a two-layer MLP on Parquet shards with pixel_0..pixel_63 and label columns."""

    def __init__(self, params: TrainParams) -> None:
        self.params = params

    def build_model(self) -> nn.Module:
        """Return the classifier (outputs logits)."""
        from torch import nn

        width = self.params.hidden_units
        return nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
        )

    def datasets(self, data_dir: Path) -> tuple[Dataset[Any], Dataset[Any]]:
        """Read every Parquet shard, scale pixels to [0, 1] and split off validation rows."""
        import pandas as pd
        import torch
        from torch.utils.data import TensorDataset

        shards = sorted(data_dir.rglob("*.parquet"))
        if not shards:
            raise DatasetError(f"no Parquet files in dataset directory {data_dir}")
        frame = pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)
        missing = [c for c in [*FEATURES, LABEL] if c not in frame.columns]
        if missing:
            raise DatasetError(f"dataset at {data_dir} lacks columns {', '.join(missing[:5])}")
        x = torch.tensor(frame[FEATURES].to_numpy(np.float32) / 16.0)
        y = torch.tensor(frame[LABEL].to_numpy(np.int64))
        order = torch.randperm(len(frame), generator=torch.Generator().manual_seed(self.params.seed))
        n_val = max(1, int(len(frame) * self.params.val_fraction))
        val, train = order[:n_val], order[n_val:]
        return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])

    def check_schemas(self, schemas: dict[str, dict[str, str]]) -> None:
        """Fail, naming the shard group and column, unless every group is Parquet with numeric pixels and label."""
        wanted = [*FEATURES, LABEL]
        if not schemas:
            raise DatasetError(f"the digits recipe reads tables with columns {FEATURES[0]}..{FEATURES[-1]} and "
                               f"{LABEL}; the source has no table")
        for group, columns in schemas.items():
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise DatasetError(f"{group}: no column {', '.join(missing[:3])}"
                                   f"{f' ({len(missing) - 3} more)' if len(missing) > 3 else ''} (the digits recipe "
                                   f"reads {FEATURES[0]}..{FEATURES[-1]} and {LABEL})")
            text = [c for c in wanted if not _NUMERIC.match(columns[c])]
            if text:
                raise DatasetError(f"{group}: column {text[0]} holds {columns[text[0]]}, not numbers")
            if not group.endswith(".parquet"):
                raise DatasetError(f"{group}: the digits recipe reads Parquet shards only (convert the files)")

    def training_step(self, model: nn.Module, batch: Any, ctx: TrainContext) -> torch.Tensor:
        """Return the cross-entropy loss of a batch."""
        from torch import nn

        x, y = (t.to(ctx.device, non_blocking=True) for t in batch)
        loss: torch.Tensor = nn.functional.cross_entropy(model(x), y)
        return loss

    def evaluate(self, model: nn.Module, loader: DataLoader[Any], ctx: TrainContext) -> dict[str, float]:
        """Return validation loss and accuracy."""
        import torch
        from torch import nn

        total = correct = 0
        loss = 0.0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(ctx.device), y.to(ctx.device)
                logits = model(x).float()
                loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                total += len(y)
        return {"val_loss": loss / total, "val_accuracy": correct / total}

    def input_example(self) -> np.ndarray:
        """Return two real digits (a 0 and a 1) as scaled pixels: the smoke test and the demo's curl send them."""
        return (np.array(EXAMPLE_DIGITS, dtype=np.float64) / 16.0).astype(np.float32)

    def serving_model(self, model: nn.Module) -> nn.Module:
        """Serve class probabilities."""
        from torch import nn

        return nn.Sequential(model, nn.Softmax(dim=1))


def recipe(params: TrainParams) -> DigitsRecipe:
    """Entrypoint: build the digits recipe."""
    return DigitsRecipe(params)
