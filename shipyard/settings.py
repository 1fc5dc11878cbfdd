"""Per-environment settings: one class, read from ``SHIPYARD_*`` variables.

This is the only module that reads the environment. Per-run knobs (epochs, learning rate, dataset)
are flow parameters, not settings (see ``shipyard.params``).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shipyard.errors import ConfigError


class TrainMode(StrEnum):
    """Where the train stage runs."""

    local = "local"
    cluster = "cluster"


class RolloutTarget(StrEnum):
    """Where the roll-out stage serves the champion."""

    local = "local"
    kubernetes = "kubernetes"


MLFLOW_SCHEMES = ("http", "https", "sqlite", "file", "databricks", "databricks-uc", "uc", "postgresql", "mysql",
                  "mssql")


# Fields marked CLUSTER cross into every pod a cluster deployment starts (the deployments' ``env`` job variable,
# deployments/apply.py): what a pipeline or training pod needs to reach the same store, MLflow, pools and
# inference cluster as the machine that deployed. Every other field is in LOCAL_ONLY, with the reason it stays
# here; a test keeps the two covering every field, so a new setting cannot silently stay behind.
CLUSTER: dict[str, Any] = {"cluster": True}
LOCAL_ONLY: dict[str, str] = {
    "home": "the pod's own home comes from its image (SHIPYARD_HOME under an emptyDir)",
    "prefect_api_url": "the Prefect worker gives its flow-run pods PREFECT_API_URL itself",
    "pipeline_work_pool": "only 'shipyard deploy cluster' reads it; a pipeline pod launches on the train pool",
    "local_work_pool": "the process pool of 'shipyard up' on this machine",
    "local_worker_poll_seconds": "the worker 'shipyard up' starts on this machine",
    "inference_host": "the local inference server's address",
    "inference_port": "the local inference server's port",
    "prefect_port": "the local Prefect server's port",
    "prefect_start_timeout_seconds": "a Prefect server this machine starts",
    "mlflow_ui_port": "the local MLflow UI's port",
    "serving_max_request_bytes": "the local inference server's limit (inference pods take server arguments)",
    "serving_timeout_seconds": "the local inference server's limit (inference pods take server arguments)",
    "serving_token": "a secret of the local inference server: never a job variable, which the Prefect UI shows",
    "local_pipeline_cron": "the local deployment's schedule",
    "inference_kube_context": "crosses only with a dedicated inference cluster, beside the kubeconfig the pipeline "
                              "pod mounts from a Secret (deployments/apply.py)",
    "inference_kubeconfig": "a path on this machine; a pipeline pod reads the mounted Secret's copy instead "
                            "(deployments/apply.py)",
}


class Settings(BaseSettings):
    """Where Shipyard keeps things and which services it talks to."""

    model_config = SettingsConfigDict(env_prefix="SHIPYARD_", extra="ignore", frozen=True)

    home: Path = Field(
        default=Path(".shipyard"),
        description="Directory for local state: the default store, the SQLite MLflow database, "
        "server logs and pid files.",
    )
    store_uri: str | None = Field(
        json_schema_extra=CLUSTER, default=None,
        description="Artifact store as an fsspec URI (s3://bucket/prefix or a local path). "
        "Default: <home>/store. For S3-compatible servers set the standard AWS_ENDPOINT_URL_S3.",
    )
    store_max_attempts: int = Field(
        json_schema_extra=CLUSTER, default=8, ge=1, le=20,
        description="Attempts per S3 request: botocore's standard retry mode (exponential backoff up to 20 s), "
        "inside s3fs's own retry loop of at most 5 tries. A store that is down fails a write after minutes, "
        "which a long training survives; 1 fails at the first error (within seconds).",
    )
    mlflow_tracking_uri: str | None = Field(
        json_schema_extra=CLUSTER, default=None,
        description="MLflow tracking URI (http://host:5000 for a server). Default: SQLite at <home>/mlflow.db.",
    )
    mlflow_experiment: str = Field(
        json_schema_extra=CLUSTER, default="shipyard",
        description="MLflow experiment that pipeline runs are logged to."
    )
    prefect_api_url: str | None = Field(
        default=None,
        description="Prefect API URL. Default: the local server on SHIPYARD_PREFECT_PORT, which 'shipyard up', "
        "'run' and 'demo' start if it is not running and keep running ('shipyard down' stops it).",
    )
    train_mode: TrainMode = Field(
        json_schema_extra=CLUSTER, default=TrainMode.local,
        description="'local' trains in-process on the best local device; 'cluster' launches the "
        "train deployment on the Kubernetes work pool.",
    )
    train_work_pool: str = Field(
        json_schema_extra=CLUSTER, default="gpu-train",
        description="Prefect Kubernetes work pool for cluster training."
    )
    pipeline_work_pool: str = Field(
        default="shipyard-cpu",
        description="Prefect Kubernetes work pool that runs the pipeline flow itself on the cluster.",
    )
    local_work_pool: str = Field(
        default="shipyard-local", description="Prefect process work pool that 'shipyard up' creates."
    )
    local_worker_poll_seconds: float = Field(
        default=2.0, gt=0, description="How often the worker 'shipyard up' starts asks the local Prefect server for "
        "work, so the UI's Run button starts a run within this time (Prefect's own default: 10 s).",
    )
    image: str = Field(
        json_schema_extra=CLUSTER, default="shipyard:latest",
        description="Container image that cluster jobs and the inference deployment run.",
    )
    kube_namespace: str = Field(
        json_schema_extra=CLUSTER, default="shipyard",
        description="Kubernetes namespace for training jobs and inference."
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
    prefect_start_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Longest a command waits for a Prefect server it starts (the local one, or "
        "a temporary one for a single command) to answer; a first start on a busy machine can take a minute."
    )
    mlflow_ui_port: int = Field(
        default=5000, ge=1, le=65535, description="Port of the local MLflow UI ('shipyard up')."
    )

    # Serving and rollout (issue 7, i7-serving).
    rollout_target: RolloutTarget = Field(
        json_schema_extra=CLUSTER, default=RolloutTarget.local,
        description="Where the roll-out stage serves the champion: 'local' (a hot-swapping server on this "
        "machine) or 'kubernetes' (a Deployment on the inference node group).",
    )
    serving_max_request_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024,
        description="Largest request body the inference server accepts; larger ones get HTTP 413.",
    )
    serving_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600,
        description="Longest a prediction may take; slower ones get HTTP 504 (and fail a rollout's warm-up).",
    )
    serving_token: str | None = Field(
        default=None,
        description="Token the inference server requires to swap models. Default: a random one kept in "
        "<home>/serving-token (mode 0600).",
    )
    # Kubernetes rollout
    inference_kube_context: str | None = Field(
        default=None,
        description="Kube context the Kubernetes rollout target uses (a dedicated inference cluster). "
        "Default: the current context, or the pod's service account in the cluster.",
    )
    inference_kubeconfig: Path | None = Field(
        default=None,
        description="Kubeconfig file of the Kubernetes rollout target. Default: KUBECONFIG or ~/.kube/config.",
    )
    inference_image: str | None = Field(
        json_schema_extra=CLUSTER, default=None,
        description="Image of the inference pods (infra/docker/Dockerfile.inference: the serving app, no Prefect, "
        "no training stack). Default: SHIPYARD_IMAGE's repository with '-inference' appended, same tag.",
    )
    inference_mlflow_tracking_uri: str | None = Field(
        json_schema_extra=CLUSTER, default=None,
        description="MLflow URI the inference pods load models from, when they reach MLflow by another name than "
        "the pipeline (dedicated topology: the training cluster's internal load balancer). Default: "
        "SHIPYARD_MLFLOW_TRACKING_URI.",
    )
    inference_replicas: int = Field(
        json_schema_extra=CLUSTER, default=2, ge=1, le=100,
        description="Replicas of the inference Deployment on Kubernetes."
    )
    inference_gpus: int = Field(
        json_schema_extra=CLUSTER, default=1, ge=0, le=8,
        description="nvidia.com/gpu per inference pod; above 0 the pods also tolerate the GPU node taint "
        "(0: the inference node group has no GPUs).",
    )
    inference_cpu: str = Field(
        json_schema_extra=CLUSTER, default="2",
        description="CPU request of each inference pod (Kubernetes quantity)."
    )
    inference_memory: str = Field(
        json_schema_extra=CLUSTER, default="8Gi",
        description="Memory request and limit of each inference pod (Kubernetes quantity)."
    )
    inference_progress_deadline_seconds: int = Field(
        json_schema_extra=CLUSTER, default=600, ge=1,
        description="A Kubernetes rollout that makes no progress this long fails and is rolled back.",
    )
    # Schedules and events (deployments, 'shipyard schedule').
    local_pipeline_cron: str = Field(
        default="0 3 * * *",
        pattern=r"^\S+( \S+){4}$",
        description="Cron (UTC) that 'shipyard up' creates the local pipeline deployment's schedule with, "
        "paused; 'shipyard schedule set|pause|resume' change it from then on.",
    )

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_scheme(cls, value: str | None) -> str | None:
        scheme = value.partition("://")[0].split("+")[0].lower() if value and "://" in value else ""
        if scheme and scheme not in MLFLOW_SCHEMES:
            raise ValueError(f"scheme '{scheme}' is not one MLflow tracks to (use http(s)://host:port for a server, "
                             f"or one of {', '.join(MLFLOW_SCHEMES[2:])})")
        return value

    def resolved_store_uri(self) -> str:
        """Return the store URI, defaulting to a directory under ``home``."""
        if self.store_uri:
            uri = self.store_uri
            return uri if uri.endswith("://") else uri.rstrip("/")
        return str((self.home / "store").resolve())

    def resolved_inference_image(self) -> str:
        """Return the inference image: the setting, else ``<repository>-inference:<tag>`` of ``image``."""
        if self.inference_image:
            return self.inference_image
        repository, sep, tag = self.image.rpartition(":")
        if not sep or "/" in tag:  # no tag: "registry:5000/shipyard" has a port, not a tag
            repository, tag = self.image, "latest"
        return f"{repository}-inference:{tag}"

    def resolved_mlflow_uri(self) -> str:
        """Return the MLflow tracking URI, defaulting to SQLite under ``home``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    def hash_cache(self) -> Path:
        """Return the SQLite file of known hashes of local source files (stat-keyed), under ``home``."""
        return self.home / "cache" / "hashes.sqlite"

    def is_local_mlflow(self) -> bool:
        """Tell whether MLflow is the embedded SQLite database rather than a server."""
        return self.resolved_mlflow_uri().startswith("sqlite:")


def redact(uri: str) -> str:
    """Return ``uri`` without any user:password part, for messages and logs."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1***@", uri)


def cluster_fields() -> tuple[str, ...]:
    """Return the names of the settings that cross into cluster pods (the fields marked CLUSTER)."""
    return tuple(name for name, info in Settings.model_fields.items()
                 if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("cluster"))


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
