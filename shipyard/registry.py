"""The MLflow side: log a training run with lineage, register the model, promote the champion.

Functions take an ``MlflowClient`` built by :func:`client`; nothing here touches MLflow at import.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import RegistryError
from shipyard.settings import Settings, redact
from shipyard.storage import Store

log = logging.getLogger(__name__)

SETTING = "SHIPYARD_MLFLOW_TRACKING_URI"
CHAMPION = "champion"
TAG_TRAIN_KEY = "shipyard.train_key"
# Explicit requirements: MLflow's inference of them costs seconds per logged model.
PIP_REQUIREMENTS = ["torch>=2.4,<2.14", "numpy", "pandas", "mlflow==3.17.2"]


class Registration(BaseModel):
    """Where a trained model ended up in MLflow."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    version: str
    run_id: str
    experiment_id: str
    promoted: bool
    champion_version: str
    reused: bool
    input_example: list[list[float]] = Field(description="Rows the smoke test sends.")

    @property
    def model_uri(self) -> str:
        """Return the registry URI of this version."""
        return f"models:/{self.model_name}/{self.version}"


@contextmanager
def translate(uri: str) -> Iterator[None]:
    """Turn MLflow and connection errors into one-line RegistryErrors naming the URI and setting."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RegistryError:
        raise
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
        raise RegistryError(f"MLflow at {redact(uri)} ({SETTING}) failed: {first[:300]}") from exc
    except (OSError, ConnectionError) as exc:
        raise RegistryError(f"MLflow at {redact(uri)} ({SETTING}) is unreachable: {exc}") from exc


def client(settings: Settings) -> Any:
    """Point MLflow at the configured tracking URI and return a client (for use inside tasks)."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_uri()
    if settings.is_local_mlflow():
        settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check(settings: Settings) -> None:
    """Fail with one line if the tracking server cannot be reached."""
    uri = settings.resolved_mlflow_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as resp:  # noqa: S310 (http(s) only)
            resp.read()
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(f"MLflow at {redact(uri)} ({SETTING}) is unreachable: {reason}") from exc


def ensure_experiment(mlflow_client: Any, settings: Settings, store: Store) -> str:
    """Return the experiment id, creating it (artifacts beside the store when MLflow is local)."""
    name = settings.mlflow_experiment
    with translate(settings.resolved_mlflow_uri()):
        found = mlflow_client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = store.url("mlflow-artifacts") if settings.is_local_mlflow() else None
        if location and store.is_local:
            location = f"file://{location}"
        return str(mlflow_client.create_experiment(name, artifact_location=location))


def find_registered(mlflow_client: Any, model_name: str, train_key: str) -> Any | None:
    """Return the model version registered from training run ``train_key``, if any."""
    from mlflow.exceptions import MlflowException

    try:
        query = f"name = '{model_name}' and tag.`{TAG_TRAIN_KEY}` = '{train_key}'"
        versions = mlflow_client.search_model_versions(query)
    except MlflowException:
        return None  # the registered model does not exist yet
    return max(versions, key=lambda v: int(v.version)) if versions else None


def champion(mlflow_client: Any, model_name: str) -> Any | None:
    """Return the version holding the champion alias, if any."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def promote_if_better(mlflow_client: Any, model_name: str, version: str, metric: str, margin: float) -> bool:
    """Move the champion alias to ``version`` if it beats the current champion by ``margin``."""
    current = champion(mlflow_client, model_name)
    new_value = _metric_of(mlflow_client, model_name, version, metric)
    if current is not None and current.version != version:
        old_value = _metric_of(mlflow_client, model_name, current.version, metric)
        if old_value is not None and (new_value is None or new_value < old_value + margin):
            log.info("version %s (%s=%s) does not beat champion %s (%s=%s) by %s; champion kept",
                     version, metric, new_value, current.version, metric, old_value, margin)
            return False
    mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)
    log.info("version %s of %s is now %s (%s=%s)", version, model_name, CHAMPION, metric, new_value)
    return True


def _metric_of(mlflow_client: Any, model_name: str, version: str, metric: str) -> float | None:
    run_id = mlflow_client.get_model_version(model_name, version).run_id
    value = mlflow_client.get_run(run_id).data.metrics.get(metric)
    return None if value is None else float(value)


def _log_lineage(result: Any, store: Store) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    manifest_url = store.url("datasets", result.dataset, "versions", f"{result.dataset_version}.json")
    source = resolve_dataset_source(manifest_url)
    dataset = MetaDataset(source=source, name=result.dataset, digest=result.dataset_version)  # type: ignore[abstract]
    mlflow.log_input(dataset, context="training")


def _log_history(mlflow_client: Any, run_id: str, result: Any) -> None:
    """Log per-epoch metrics (step = epoch), throughput, and the loss/accuracy curves as a PNG artifact."""
    import tempfile
    from pathlib import Path

    from mlflow.entities import Metric

    from shipyard.training.curves import curves_png

    stamp = int(time.time() * 1000)  # MLflow shows timestamp 0 as 1970 in its charts' wall-time axis
    metrics = []
    for entry in result.history:
        values = {"train_loss": entry.train_loss, "epoch_seconds": entry.seconds, **entry.metrics}
        metrics += [Metric(k, float(v), stamp, entry.epoch) for k, v in values.items()]
    metrics.append(Metric("samples_per_second", float(result.samples_per_second), stamp, len(result.history)))
    mlflow_client.log_batch(run_id, metrics=metrics)
    if result.history:
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "training-curves.png"
            png.write_bytes(curves_png(result.history, title=f"training {result.key} on {result.gpu or result.device}"))
            mlflow_client.log_artifact(run_id, str(png))


def log_and_register(mlflow_client: Any, settings: Settings, store: Store, result: Any, serving_model: Any,
                     input_example: Any, model_name: str) -> tuple[str, str, str]:
    """Log the training run (params, metrics, lineage, model) and register a version.

    Returns (run_id, experiment_id, version).
    """
    import mlflow

    experiment_id = ensure_experiment(mlflow_client, settings, store)
    with translate(settings.resolved_mlflow_uri()):
        tags = {TAG_TRAIN_KEY: result.key, "shipyard.dataset": result.dataset,
                "shipyard.dataset_version": result.dataset_version, "shipyard.device": result.device,
                "shipyard.gpu": result.gpu or "none", "shipyard.model_url": result.model_url,
                "shipyard.world_size": str(result.world_size),
                "shipyard.resumed_from_step": str(result.resumed_from_step or "none")}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{result.key}", tags=tags) as run:
            mlflow.log_params(result.params.model_dump(mode="json"))
            _log_lineage(result, store)
            _log_history(mlflow_client, run.info.run_id, result)
            info = mlflow.pytorch.log_model(serving_model, name="model", input_example=input_example,
                                            pip_requirements=PIP_REQUIREMENTS)
        version = mlflow.register_model(info.model_uri, model_name, tags={TAG_TRAIN_KEY: result.key})
        return run.info.run_id, experiment_id, str(version.version)
