"""Shipyard from Python, for notebooks: run the pipeline, browse dataset versions, runs and models.

Every function reads the same ``SHIPYARD_*`` settings as the CLI, so a notebook on the local defaults sees
what ``shipyard demo`` made::

    from shipyard import api
    result = api.run_pipeline(training={"epochs": 5})
    api.list_versions("digits")
    frame = api.load_dataframe("digits")
    api.model_versions()
    api.compare("digits-classifier", "1", "2")

Prefect, MLflow and torch are imported inside the functions that need them: importing this module is cheap.
"""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel

from shipyard import datasets
from shipyard.errors import DatasetError, RegistryError
from shipyard.params import DatasetParams, RegisterParams, RolloutParams, TrainParams
from shipyard.pipeline import PipelineResult
from shipyard.settings import Settings, load_settings
from shipyard.storage import Store, filesystem

__all__ = ["Comparison", "DeploymentRun", "ModelVersion", "compare", "list_datasets", "list_versions",
           "load_champion", "load_dataframe", "model_versions", "run_pipeline", "show_version", "training_runs",
           "version_files"]


class DeploymentRun(BaseModel):
    """A pipeline run started through a deployment (a worker runs it)."""

    flow_run_id: str
    state: str
    url: str


class ModelVersion(BaseModel):
    """A registered model version with the training run and dataset version it came from."""

    name: str
    version: str
    aliases: list[str]
    run_id: str
    dataset: str | None
    dataset_version: str | None
    metrics: dict[str, float]


class Comparison(BaseModel):
    """Accuracy of model versions on the same holdout rows of one dataset version."""

    dataset: str
    dataset_version: str
    rows: int
    accuracy: dict[str, float]  # model version -> share of holdout rows predicted right

    @property
    def better(self) -> str:
        """Return the version with the higher accuracy (the first on a tie)."""
        return max(self.accuracy, key=lambda v: self.accuracy[v])


def _store() -> tuple[Settings, Store]:
    settings = load_settings()
    return settings, filesystem(settings)


def run_pipeline(dataset: DatasetParams | dict[str, Any] | None = None,
                 training: TrainParams | dict[str, Any] | None = None,
                 registry: RegisterParams | dict[str, Any] | None = None,
                 rollout: RolloutParams | dict[str, Any] | None = None, *,
                 deployment: str | None = None) -> PipelineResult | DeploymentRun:
    """Run stage -> train -> register -> roll out in this process, or as ``deployment`` (e.g. 'pipeline-flow/local').

    Parameters are models or plain dicts of their fields; unset ones keep their defaults. The local Prefect
    server is started (and kept) if no server is configured. With ``deployment`` this waits for the run.
    """
    from shipyard.cli.runtime import ready_prefect_api, start_local_prefect, ui_url

    params: dict[str, Any] = {"dataset": DatasetParams.model_validate(dataset or {}),
                              "training": TrainParams.model_validate(training or {}),
                              "registry": RegisterParams.model_validate(registry or {}),
                              "rollout": RolloutParams.model_validate(rollout or {})}
    settings = load_settings()
    start_local_prefect(settings)
    api_url = ready_prefect_api(settings)  # before Prefect is first imported: it reads PREFECT_API_URL
    if deployment is None:
        from flows.pipeline import pipeline_flow

        result: PipelineResult = pipeline_flow(**params)
        return result
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run = cast(FlowRun, run_deployment(deployment, parameters={k: v.model_dump(mode="json")
                                                                for k, v in params.items()}))
    return DeploymentRun(flow_run_id=str(run.id), state=str(run.state.name) if run.state else "unknown",
                         url=str(ui_url(api_url, f"runs/flow-run/{run.id}")))


def list_datasets() -> list[str]:
    """Return the names of the datasets in the store."""
    _, store = _store()
    return datasets.list_datasets(store)


def list_versions(name: str) -> list[datasets.Manifest]:
    """Return a dataset's versions, oldest first."""
    _, store = _store()
    return datasets.list_versions(store, name)


def show_version(name: str, version: str = "latest") -> datasets.Manifest:
    """Return one version's manifest (files, formats, schemas); ``version`` may be a prefix or 'latest'."""
    _, store = _store()
    return datasets.load_manifest(store, name, datasets.resolve_version(store, name, version))


def version_files(name: str, version: str = "latest") -> list[datasets.FileEntry]:
    """Return one version's files (path, format, rows, size, hash), read from its manifest's shards."""
    _, store = _store()
    return list(datasets.iter_files(store, show_version(name, version)))


def load_dataframe(name: str, version: str = "latest") -> Any:
    """Pull a version into the local cache (verified) and return its Parquet and CSV rows as one DataFrame."""
    import pandas as pd

    settings, store = _store()
    manifest = show_version(name, version)
    directory = datasets.pull(store, name, manifest.version, settings.home / "cache" / "datasets")
    readers = {"parquet": pd.read_parquet, "csv": pd.read_csv}
    tables = [readers[f.format](directory / f.path) for f in datasets.iter_files(store, manifest)
              if f.format in readers]
    if not tables:
        raise DatasetError(f"dataset {name}@{manifest.version} has no Parquet or CSV files to load as a DataFrame")
    return pd.concat(tables, ignore_index=True)


def training_runs(max_results: int = 100) -> Any:
    """Return the training runs of the experiment (SHIPYARD_MLFLOW_EXPERIMENT) as a DataFrame, newest first."""
    import mlflow

    from shipyard import registry

    settings = load_settings()
    registry.client(settings)
    with registry.translate(settings.resolved_mlflow_uri()):
        return mlflow.search_runs(experiment_names=[settings.mlflow_experiment], max_results=max_results,
                                  order_by=["attributes.start_time DESC"])


def model_versions(model_name: str = "digits-classifier") -> list[ModelVersion]:
    """Return every version of a registered model with its aliases, metrics and dataset lineage."""
    from shipyard import registry

    settings = load_settings()
    client = registry.client(settings)
    with registry.translate(settings.resolved_mlflow_uri()):
        found = client.search_model_versions(f"name = '{model_name}'")
        out = []
        for mv in sorted(found, key=lambda v: int(v.version)):
            run = client.get_run(str(mv.run_id))
            out.append(ModelVersion(name=model_name, version=str(mv.version), aliases=list(mv.aliases or []),
                                    run_id=str(mv.run_id), dataset=run.data.tags.get("shipyard.dataset"),
                                    dataset_version=run.data.tags.get("shipyard.dataset_version"),
                                    metrics=dict(run.data.metrics)))
    return out


def load_champion(model_name: str = "digits-classifier") -> Any:
    """Load the model version aliased ``champion`` as an MLflow pyfunc model (``.predict(rows)``)."""
    return _load(model_name, "@champion")


def _load(model_name: str, ref: str) -> Any:
    import mlflow

    from shipyard import registry

    settings = load_settings()
    registry.client(settings)
    with registry.translate(settings.resolved_mlflow_uri()):
        sep = "" if ref.startswith("@") else "/"
        return mlflow.pyfunc.load_model(f"models:/{model_name}{sep}{ref}")


def compare(model_name: str, version_a: str, version_b: str, dataset: str | None = None,
            dataset_version: str | None = None, training: TrainParams | None = None) -> Comparison:
    """Score two model versions on the same holdout: the validation rows the recipe splits off a dataset version.

    The dataset version defaults to the one ``version_a`` was trained on; the split (recipe, seed, validation
    fraction) to ``training``, else the defaults.
    """
    import numpy as np
    from torch.utils.data import DataLoader

    from shipyard.training import load_recipe

    lineage = {v.version: v for v in model_versions(model_name)}
    for version in (version_a, version_b):
        if version not in lineage:
            raise RegistryError(f"model '{model_name}' has no version {version} (versions: {', '.join(lineage)})")
    name = dataset or lineage[version_a].dataset or "digits"
    settings, store = _store()
    resolved = datasets.resolve_version(store, name, dataset_version or lineage[version_a].dataset_version or "latest")
    params = training or TrainParams()
    _, holdout = load_recipe(params.entrypoint, params).datasets(
        datasets.pull(store, name, resolved, settings.home / "cache" / "datasets"))
    x, y = (np.concatenate(parts) for parts in zip(*((b[0].numpy(), b[1].numpy())
                                                     for b in DataLoader(holdout, batch_size=1024)), strict=True))
    accuracy = {v: float((np.asarray(_load(model_name, v).predict(x)).argmax(1) == y).mean())
                for v in (version_a, version_b)}
    return Comparison(dataset=name, dataset_version=resolved, rows=len(y), accuracy=accuracy)
