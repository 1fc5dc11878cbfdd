"""Flow run names that say what runs, as the Prefect UI lists them: ``train digits@a88ffecf e10``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shipyard.params import DatasetParams, TrainParams

SHORT_VERSION = 8  # characters of a version id in a run name


def _model(kind: type[Any], value: Any) -> Any:
    """Accept a parameter as the flow got it: a model (in-process call) or a dict (deployment run)."""
    return value if isinstance(value, kind) else kind.model_validate(value or {})


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def train_run_name(parameters: Mapping[str, Any]) -> str:
    """Name a train-flow run from its parameters: a dataset name and version, or one dataset reference."""
    training = _model(TrainParams, parameters.get("training"))
    dataset = parameters["dataset"]
    name = dataset if isinstance(dataset, str) else _field(dataset, "name")
    version = parameters.get("dataset_version") or _field(dataset, "version") or "?"
    return f"train {name}@{str(version)[:SHORT_VERSION]} e{training.epochs}"


def pipeline_run_name(parameters: Mapping[str, Any]) -> str:
    """Name a pipeline-flow run: the dataset version when it is given, else the source it stages."""
    dataset = _model(DatasetParams, parameters.get("dataset"))
    training = _model(TrainParams, parameters.get("training"))
    what = f"@{dataset.version[:SHORT_VERSION]}" if dataset.version else f" from {dataset.source}"
    return f"pipeline {dataset.name}{what} e{training.epochs}"
