"""Smoke tests shared by the rollout targets: a served version must answer what MLflow itself predicts."""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.errors import ServingError


def reference_predictions(model_uri: str, example: list[list[float]], registry_uri: str) -> np.ndarray:
    """Return what ``mlflow.pyfunc.load_model(model_uri)`` predicts for ``example``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_registry_uri(registry_uri)
    try:
        predicted = mlflow.pyfunc.load_model(model_uri).predict(np.asarray(example, dtype=np.float32))
    except MlflowException as exc:
        raise ServingError(f"mlflow.pyfunc cannot predict with {model_uri}: {exc.message}") from exc
    except Exception as exc:
        raise ServingError(f"mlflow.pyfunc cannot predict with {model_uri}: {type(exc).__name__}: {exc}") from exc
    return np.asarray(predicted)


def check_answers(model_uri: str, example: list[list[float]], served: list[Any], expected: np.ndarray,
                  live: list[Any] | None) -> None:
    """Raise ServingError unless ``served`` has a row per input row and the live version's shape, and equals
    ``expected``."""
    got = np.asarray(served)
    if got.ndim == 0 or got.shape[0] != len(example):
        raise ServingError(f"{model_uri} answers {got.shape[0] if got.ndim else 0} predictions for "
                           f"{len(example)} input rows")
    if live is not None and got.shape != np.asarray(live).shape:
        raise ServingError(f"{model_uri} answers with shape {list(got.shape)} where the live version answers "
                           f"{list(np.asarray(live).shape)}; clients would break")
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise ServingError(f"{model_uri} served answers that differ from mlflow.pyfunc.load_model's "
                           f"(got shape {list(got.shape)}, expected {list(expected.shape)})")
