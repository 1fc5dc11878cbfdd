"""Per-environment settings: one class, read from ``SHIPYARD_*`` variables.

This is the only module that reads the environment. Per-run knobs (epochs, learning rate, dataset)
are flow parameters, not settings (see ``shipyard.params``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shipyard.errors import ConfigError


class TrainMode(StrEnum):
    """Where the train stage runs."""

    local = "local"
    cluster = "cluster"


class Settings(BaseSettings):
    """Where Shipyard keeps things and which services it talks to."""

    model_config = SettingsConfigDict(env_prefix="SHIPYARD_", extra="ignore", frozen=True)

    home: Path = Field(
        default=Path(".shipyard"),
        description="Directory for local state: the default store, the SQLite MLflow database, "
        "server logs and pid files.",
    )
    store_uri: str | None = Field(
        default=None,
        description="Artifact store as an fsspec URI (s3://bucket/prefix or a local path). "
        "Default: <home>/store. For S3-compatible servers set the standard AWS_ENDPOINT_URL_S3.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (http://host:5000 for a server). Default: SQLite at <home>/mlflow.db.",
    )
    mlflow_experiment: str = Field(
        default="shipyard", description="MLflow experiment that pipeline runs are logged to."
    )
    prefect_api_url: str | None = Field(
        default=None,
        description="Prefect API URL. Default: the local server on SHIPYARD_PREFECT_PORT, which 'shipyard up', "
        "'run' and 'demo' start if it is not running and keep running ('shipyard down' stops it).",
    )
    train_mode: TrainMode = Field(
        default=TrainMode.local,
        description="'local' trains in-process on the best local device; 'cluster' launches the "
        "train deployment on the Kubernetes work pool.",
    )
    train_work_pool: str = Field(
        default="gpu-train", description="Prefect Kubernetes work pool for cluster training."
    )
    pipeline_work_pool: str = Field(
        default="shipyard-cpu",
        description="Prefect Kubernetes work pool that runs the pipeline flow itself on the cluster.",
    )
    local_work_pool: str = Field(
        default="shipyard-local", description="Prefect process work pool that 'shipyard up' creates."
    )
    image: str = Field(
        default="shipyard:latest",
        description="Container image that cluster jobs and the inference deployment run.",
    )
    kube_namespace: str = Field(
        default="shipyard", description="Kubernetes namespace for training jobs and inference."
    )
    inference_host: str = Field(
        default="127.0.0.1", description="Address the local inference server binds to."
    )
    inference_port: int = Field(
        default=5055, ge=1, le=65535, description="Port of the local inference server."
    )
    prefect_port: int = Field(
        default=4200, ge=1, le=65535, description="Port of the local Prefect server ('shipyard up')."
    )
    mlflow_ui_port: int = Field(
        default=5000, ge=1, le=65535, description="Port of the local MLflow UI ('shipyard up')."
    )

    # Schedules and events (deployments, 'shipyard schedule').
    local_pipeline_cron: str = Field(
        default="0 3 * * *",
        pattern=r"^\S+( \S+){4}$",
        description="Cron (UTC) that 'shipyard up' creates the local pipeline deployment's schedule with, "
        "paused; 'shipyard schedule set|pause|resume' change it from then on.",
    )

    def resolved_store_uri(self) -> str:
        """Return the store URI, defaulting to a directory under ``home``."""
        if self.store_uri:
            uri = self.store_uri
            return uri if uri.endswith("://") else uri.rstrip("/")
        return str((self.home / "store").resolve())

    def resolved_mlflow_uri(self) -> str:
        """Return the MLflow tracking URI, defaulting to SQLite under ``home``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    def is_local_mlflow(self) -> bool:
        """Tell whether MLflow is the embedded SQLite database rather than a server."""
        return self.resolved_mlflow_uri().startswith("sqlite:")


def redact(uri: str) -> str:
    """Return ``uri`` without any user:password part, for messages and logs."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1***@", uri)


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into one-line ConfigErrors."""
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise ConfigError(f"setting SHIPYARD_{field.upper()} is invalid: {err['msg']}") from exc


def settings_table() -> list[tuple[str, str, str]]:
    """List (variable, default, description) for every setting, for docs and --help."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else str(getattr(field.default, "value", field.default))
        rows.append((f"SHIPYARD_{name.upper()}", default, field.description or ""))
    return rows


def settings_markdown() -> str:
    """Render the settings as the markdown table the README carries."""
    lines = ["| variable | default | what it holds |", "|---|---|---|"]
    for name, default, description in settings_table():
        lines.append(f"| `{name}` | {f'`{default}`' if default else ''} | {description} |")
    return "\n".join(lines)
