"""Per-run parameters: pydantic models that Prefect validates and renders as the UI's Run form.

Titles and descriptions here are user-facing text. Every model forbids unknown fields, so a mistyped
parameter fails validation naming the field before any work starts.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shipyard.refs import NAME_PATTERN, DatasetRef

__all__ = ["NAME_PATTERN", "DatasetParams", "DatasetRef", "RegisterParams", "RolloutParams", "TrainParams"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetParams(_Params):
    """Which data to stage."""

    name: str = Field(
        default="digits",
        pattern=NAME_PATTERN,
        title="Dataset name",
        description="Name the dataset's versions are kept under in the store.",
    )
    source: str = Field(
        default="demo",
        title="Source",
        description="'demo' for the bundled handwritten digits, or a local directory, glob or fsspec URI "
        "(s3://bucket/path) holding Parquet, CSV or NPZ files.",
    )
    version: str | None = Field(
        default=None,
        pattern=r"^(latest|[0-9a-f]{4,64})$",
        title="Staged version",
        description="Use this already staged version (id, unique prefix or 'latest') instead of staging the "
        "source; the new-data trigger sets it to the version just staged.",
    )


class TrainParams(_Params):
    """How to train."""

    entrypoint: str = Field(
        default="shipyard.training.digits:recipe",
        title="Model entrypoint",
        description="module:function returning a training recipe (see docs/training.md).",
    )
    recipe_params: dict[str, Any] = Field(
        default_factory=dict,
        title="Recipe parameters",
        description="The recipe's own parameters, validated against the pydantic model its entrypoint declares "
        "(see docs/training.md, 'A recipe's own parameters'); part of the training key.",
    )
    epochs: int = Field(default=10, ge=1, le=10_000, title="Epochs", description="Passes over the training split.")
    batch_size: int = Field(default=64, ge=1, le=1_000_000, title="Batch size", description="Samples per step.")
    learning_rate: float = Field(
        default=3e-3, gt=0, le=10, title="Learning rate", description="AdamW learning rate."
    )
    weight_decay: float = Field(default=1e-4, ge=0, le=1, title="Weight decay", description="AdamW weight decay.")
    hidden_units: int = Field(
        default=128, ge=1, le=65_536, title="Hidden units", description="Width of the hidden layers (model-specific)."
    )
    val_fraction: float = Field(
        default=0.2, gt=0, lt=1, title="Validation fraction", description="Share of rows held out for validation."
    )
    seed: int = Field(default=0, ge=0, title="Seed", description="Seed for splits, initialisation and shuffling.")
    checkpoint_every_steps: int = Field(
        default=0,
        ge=0,
        title="Checkpoint every N steps",
        description="Write a checkpoint to the store every N optimizer steps (0: at the end of each epoch only).",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=64,
        title="Nodes",
        description="Training pods on the train node group; above 1, an Indexed Job trains across them with torchrun "
        "(cluster only, see docs/training.md).",
    )
    procs_per_node: int = Field(
        default=1,
        ge=1,
        le=8,
        title="Processes per node",
        description="Training processes (and GPUs) per pod when nodes is above 1: one torchrun worker per GPU.",
    )

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"entrypoint '{value}' must look like 'package.module:function'")
        return value


class RegisterParams(_Params):
    """How to register and promote the model."""

    model_name: str = Field(
        default="digits-classifier",
        pattern=NAME_PATTERN,
        title="Registered model name",
        description="Name of the model in the MLflow registry.",
    )
    metric: str = Field(
        default="val_accuracy",
        title="Promotion metric",
        description="Metric (higher is better) compared against the current champion.",
    )
    promotion_margin: float = Field(
        default=0.0,
        ge=0,
        le=1,
        title="Promotion margin",
        description="How much the new model must beat the champion's metric by to become champion.",
    )
    min_metrics: dict[str, float] = Field(
        default_factory=dict,
        title="Minimum metrics",
        description="Absolute thresholds on the holdout, e.g. {\"val_accuracy\": 0.9}: a model below any of them "
        "is never promoted.",
    )
    holdout: DatasetRef | None = Field(
        default=None,
        title="Holdout dataset version",
        description="Dataset version whose validation split challenger and champion are both evaluated on. "
        "Default: the version the model's first champion was trained on (recorded on the registered model).",
    )
    require_approval: bool = Field(
        default=False,
        title="Require approval",
        description="Pause before promoting a winner until someone approves or rejects it in the Prefect UI.",
    )
    approval_timeout_seconds: int = Field(
        default=3600,
        ge=10,
        le=7 * 24 * 3600,
        title="Approval timeout (s)",
        description="How long to wait for an approval; no answer in time means rejected.",
    )


class RolloutParams(_Params):
    """How to serve the champion."""

    smoke_test: bool = Field(
        default=True, title="Smoke test", description="Send one prediction before calling the rollout done."
    )
