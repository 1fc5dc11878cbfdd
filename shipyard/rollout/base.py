"""The interface every rollout target implements (``local``, ``kubernetes``)."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict


class ModelRef(BaseModel):
    """One registered model version: the identity that travels from the registry to the endpoint."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    version: str

    @property
    def uri(self) -> str:
        """Return the registry URI of this version."""
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
    """A place that serves one model version at a time and can switch versions without downtime."""

    name: str

    def live(self) -> Live | None:
        """Return what is served now, or None."""
        ...

    def roll_out(self, model: ModelRef, example: list[list[float]] | None) -> RolloutResult:
        """Serve ``model``; on any failure restore what was live before, wait for it, then raise."""
        ...
