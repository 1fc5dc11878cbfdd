"""What an epoch reports: plain pydantic, no torch, so a cached run can read results without importing it."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel


class EpochMetrics(BaseModel):
    """Metrics of one finished epoch."""

    epoch: int
    step: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    samples: int


EpochCallback = Callable[[EpochMetrics], None]
