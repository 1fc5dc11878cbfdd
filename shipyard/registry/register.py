"""Log a training run to MLflow and register it as a model version: once per training, even when raced."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from shipyard.registry.lease import lease
from shipyard.registry.lineage import TAG_TRAIN_KEY, RunContext, describe, lineage_tags
from shipyard.registry.tracking import ensure_experiment, translate, uri_of
from shipyard.settings import Settings
from shipyard.storage import Store
from shipyard.training import TrainResult, load_model, load_recipe

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

# torch.export (which MLflow 3 logs PyTorch models with) is not thread-safe: one export at a time per process.
_EXPORT_LOCK = threading.Lock()
# Explicit requirements: MLflow's inference of them costs seconds per logged model.
PIP_REQUIREMENTS = ["torch>=2.4,<2.14", "numpy", "pandas", "mlflow==3.17.2"]


class Registered(BaseModel):
    """A model version registered from one training run."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    version: str
    run_id: str
    experiment_id: str
    reused: bool = Field(description="The training was registered before; nothing new was created.")
    input_example: list[list[float]] = Field(description="Rows the smoke test sends.")

    @property
    def model_uri(self) -> str:
        """Return the registry URI of this version."""
        return f"models:/{self.model_name}/{self.version}"


def find_registered(mlflow_client: MlflowClient, model_name: str, train_key: str) -> ModelVersion | None:
    """Return the model version registered from training run ``train_key``, if any."""
    query = f"name = '{model_name}' and tag.`{TAG_TRAIN_KEY}` = '{train_key}'"
    with translate(uri_of(mlflow_client)):
        versions = mlflow_client.search_model_versions(query)
    return min(versions, key=lambda v: int(v.version)) if versions else None  # the one _one_version keeps


def register(mlflow_client: MlflowClient, settings: Settings, store: Store, result: TrainResult, model_name: str,
             metric: str, context: RunContext) -> Registered:
    """Register the training as a version of ``model_name`` unless it already is one.

    Two registrations of the same training at once give one version: each holds a lease per training key
    in the store (create-only) while it looks for an existing version and registers.
    """
    example = _example(result)
    found = _existing(mlflow_client, model_name, result, example)  # the common rerun: no lease, nothing written
    if found is not None:
        return found
    with lease(store, ("registry", model_name, "claims", result.key), purpose=f"register {result.key}"):
        found = _existing(mlflow_client, model_name, result, example)  # registered while we waited
        if found is not None:
            return found
        run_id, experiment_id, version = _log_and_register(mlflow_client, settings, store, result, model_name,
                                                           metric, context)
    return Registered(model_name=model_name, version=version, run_id=run_id, experiment_id=experiment_id,
                      reused=False, input_example=example)


def registered_version(mlflow_client: MlflowClient, model_name: str, result: TrainResult) -> Registered | None:
    """Return the version :func:`register` would reuse for ``result`` (``reused``), or None; writes nothing."""
    return _existing(mlflow_client, model_name, result, _example(result))


def _example(result: TrainResult) -> list[list[float]]:
    return load_recipe(result.params.entrypoint, result.params).input_example().tolist()  # type: ignore[no-any-return]


def _existing(mlflow_client: MlflowClient, model_name: str, result: TrainResult,
              example: list[list[float]]) -> Registered | None:
    existing = find_registered(mlflow_client, model_name, result.key)
    if existing is None:
        return None
    run_id, version = str(existing.run_id), str(existing.version)
    with translate(uri_of(mlflow_client)):
        experiment_id = str(mlflow_client.get_run(run_id).info.experiment_id)
    log.info("training %s is already %s version %s; not registering again", result.key, model_name, version)
    return Registered(model_name=model_name, version=version, run_id=run_id, experiment_id=experiment_id,
                      reused=True, input_example=example)


def _log_and_register(mlflow_client: MlflowClient, settings: Settings, store: Store, result: TrainResult,
                      model_name: str, metric: str, context: RunContext) -> tuple[str, str, str]:
    """Log the training run (params, metrics, lineage, model) and register a version with lineage tags."""
    import mlflow

    recipe = load_recipe(result.params.entrypoint, result.params)
    serving_model = recipe.serving_model(load_model(store, result))
    experiment_id = ensure_experiment(mlflow_client, settings, store)
    tags = lineage_tags(result, store, settings, context)
    run_tags = {**tags, "shipyard.dataset_version": result.dataset.version, "shipyard.model_url": result.model_url,
                "shipyard.world_size": str(result.world_size),
                "shipyard.nodes": str(result.nodes),
                "shipyard.resumed_from_step": str(result.resumed_from_step or "none")}
    with translate(settings.resolved_mlflow_uri()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's "source can be interpreted in multiple ways"
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{result.key}", tags=run_tags) as run:
            params = result.params.model_dump(mode="json")
            recipe_params = params.pop("recipe_params", {})
            mlflow.log_params({**params, **{f"recipe.{k}": v for k, v in recipe_params.items()}})
            _log_dataset(result, store)
            _log_history(mlflow_client, run.info.run_id, result)
            with _EXPORT_LOCK:
                info = mlflow.pytorch.log_model(serving_model, name="model", input_example=recipe.input_example(),
                                                pip_requirements=PIP_REQUIREMENTS)
        # MLflow numbers versions by reading the highest one: two creations at once can collide in its database.
        with lease(store, ("registry", model_name, "versions"), purpose=f"create a version from {result.key}"):
            created = mlflow.register_model(info.model_uri, model_name, tags=tags)
        version = _one_version(mlflow_client, model_name, result.key, str(created.version))
        mlflow_client.update_model_version(model_name, version, description=describe(result, metric, "pending"))
    log.info("registered %s version %s from MLflow run %s", model_name, version, run.info.run_id)
    return run.info.run_id, experiment_id, version


def _one_version(mlflow_client: MlflowClient, model_name: str, train_key: str, created: str) -> str:
    """Keep the first version registered from ``train_key`` and delete any other (call with its claim held).

    MLflow's client retries a POST whose answer was lost (the server killed after committing, a reset):
    the retried create makes a second version of the same training.
    """
    query = f"name = '{model_name}' and tag.`{TAG_TRAIN_KEY}` = '{train_key}'"
    versions = sorted({str(v.version) for v in mlflow_client.search_model_versions(query)} | {created}, key=int)
    for extra in versions[1:]:
        log.warning("%s version %s repeats version %s (training %s, a retried request): deleting it",
                    model_name, extra, versions[0], train_key)
        mlflow_client.delete_model_version(model_name, extra)
    return versions[0]


def _log_dataset(result: TrainResult, store: Store) -> None:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException

    source = resolve_dataset_source(result.dataset.manifest_url(store))
    dataset = MetaDataset(source=source, name=result.dataset.name, digest=result.dataset.version)  # type: ignore[abstract]
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context="training")
            return
        except MlflowException as exc:
            # The server's get-or-create of a dataset row races with another run logging the same dataset;
            # the loser's retry finds the row the winner created.
            if "UNIQUE constraint failed: datasets" not in str(exc) or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def _log_history(mlflow_client: MlflowClient, run_id: str, result: TrainResult) -> None:
    """Log per-epoch metrics (step = epoch), throughput, and the loss/accuracy curves as a PNG artifact."""
    from mlflow.entities import Metric

    from shipyard.training.curves import curves_png

    stamp = int(time.time() * 1000)  # MLflow shows timestamp 0 as 1970 in its charts' wall-time axis
    metrics = []
    for entry in result.history:
        values = {"train_loss": entry.train_loss, "epoch_seconds": entry.seconds, **entry.metrics}
        metrics += [Metric(k, float(v), stamp, entry.epoch) for k, v in values.items()]
    metrics.append(Metric("samples_per_second", float(result.samples_per_second), stamp, len(result.history)))
    metrics += [Metric(f"samples_per_second_rank_{rank}", float(rate), stamp, len(result.history))
                for rank, rate in enumerate(result.rank_samples_per_second)]
    mlflow_client.log_batch(run_id, metrics=metrics)
    if result.history:
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "training-curves.png"
            png.write_bytes(curves_png(result.history, title=f"training {result.key} on {result.gpu or result.device}"))
            mlflow_client.log_artifact(run_id, str(png))
