"""Models for the serving tests and the serving benchmark: a digits-shaped MLP and broken versions of it.

The broken ones stand for what reaches a registry in real life: a model that cannot load, one that
raises on predict, one that answers the wrong shape, one slower than the server's timeout.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from mlflow.pyfunc import PythonModel
from torch import nn

from shipyard.registry import PIP_REQUIREMENTS

EXAMPLE = np.linspace(0, 1, 128, dtype=np.float32).reshape(2, 64)


def mlp(seed: int, hidden: int = 64) -> nn.Module:
    """Return the digits classifier's shape (64 pixels -> 10 probabilities) with seeded random weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10), nn.Softmax(dim=1))


def register_torch(tracking_uri: str, name: str, seed: int, hidden: int = 64) -> str:
    """Log and register a torch MLP (tensor signature, input example); return its version."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow.start_run(tags={"shipyard.dataset": "digits", "shipyard.dataset_version": f"ds-{seed}"}):
        info = mlflow.pytorch.log_model(mlp(seed, hidden), name="model", input_example=EXAMPLE,
                                        pip_requirements=PIP_REQUIREMENTS)
    return str(mlflow.register_model(info.model_uri, name).version)


class FailsToLoad(PythonModel):  # type: ignore[misc]
    """Raises while loading, as a model with a missing or incompatible artifact does."""

    def load_context(self, context: Any) -> None:
        raise RuntimeError("weights file is truncated")

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # no hints: MLflow reads them
        return np.zeros((len(model_input), 10))


class RaisesOnPredict(PythonModel):  # type: ignore[misc]
    """Loads, then raises on every prediction."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # no hints: MLflow reads them
        raise ValueError("matmul: shapes do not align")


class WrongShape(PythonModel):  # type: ignore[misc]
    """Answers 3 columns where the digits model answers 10."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # no hints: MLflow reads them
        return np.full((len(model_input), 3), 1 / 3)


class Slow(PythonModel):  # type: ignore[misc]
    """Answers right, but slower than the server's prediction timeout."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # no hints: MLflow reads them
        time.sleep(30)
        return np.full((len(model_input), 10), 0.1)


class SlowOnBigInputs(PythonModel):  # type: ignore[misc]
    """Answers small inputs (its warm-up) at once and more than 8 rows after 30 s."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # no hints: MLflow reads them
        if len(model_input) > 8:
            time.sleep(30)
        return np.full((len(model_input), 10), 0.1)


BROKEN = {"slow-on-big-inputs": SlowOnBigInputs,
          "fails-to-load": FailsToLoad, "raises-on-predict": RaisesOnPredict, "wrong-shape": WrongShape,
          "slow": Slow}


def register_broken(tracking_uri: str, name: str, kind: str) -> str:
    """Register one broken pyfunc model with a signature and an input example.

    Saved first and logged as plain artifacts: ``log_model`` would predict on the example (and fail or sleep).
    """
    import tempfile

    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    signature = infer_signature(EXAMPLE, np.zeros((2, 10), dtype=np.float32))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        mlflow.pyfunc.save_model(f"{tmp}/model", python_model=BROKEN[kind](), signature=signature,
                                 input_example=EXAMPLE, pip_requirements=PIP_REQUIREMENTS)
        mlflow.log_artifacts(f"{tmp}/model", "model")
    return str(mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version)
