"""The interface every rollout target implements."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict


class ModelRef(BaseModel):
    """One registered model version."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    version: str

    @property
    def uri(self) -> str:
        """Return the MLflow URI of this version."""
        return f"models:/{self.model_name}/{self.version}"


class Live(BaseModel):
    """What a target serves now."""

    target: str
    model: ModelRef
    endpoint: str
    detail: dict[str, str] = {}


class RolloutResult(BaseModel):
    """The outcome of one rollout."""

    target: str
    model: ModelRef
    previous: ModelRef | None
    endpoint: str
    reused: bool
    predictions: list[Any] | None


class RolloutTarget(Protocol):
    """Where a model version is served: restore what was live on any failure, then raise."""

    name: str

    def live(self) -> Live | None:
        """Return what is served now, or None."""
        ...

    def roll_out(self, model: ModelRef, example: list[list[float]] | None) -> RolloutResult:
        """Serve ``model``; smoke-test it on ``example``; on failure restore the previous version and raise."""
        ...
