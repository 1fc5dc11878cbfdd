"""Load a model version for serving: the pyfunc model, plus a direct tensor path when the model allows it.

MLflow's scoring path turns every request into a pandas DataFrame and back and runs PyTorch under
``no_grad``. For a PyTorch model with a single tensor input signature, :class:`Served` skips all that:
the JSON rows become one float tensor, the module runs under ``torch.inference_mode``, and concurrent
requests share one forward pass (see :mod:`shipyard.serving.batching`). Any other model, and any other
request format, takes MLflow's own scoring function, so the protocol stays MLflow's.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class BadInput(ValueError):
    """The request does not match the model's input signature (answered with HTTP 400)."""


@dataclass
class TensorPath:
    """A PyTorch module and the tensor shape and dtype its signature declares."""

    module: Any
    device: str
    shape: tuple[int, ...]
    dtype: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, rows: Any) -> np.ndarray:
        """Return ``rows`` as an array of the signature's dtype and shape, or raise BadInput."""
        try:
            array = np.asarray(rows, dtype=self.dtype)
        except (ValueError, TypeError) as exc:
            raise BadInput(f"inputs are not a rectangular array of numbers: {exc}") from exc
        if array.ndim != len(self.shape) or any(d not in (-1, a) for d, a in zip(self.shape, array.shape, strict=True)):
            raise BadInput(f"inputs have shape {list(array.shape)}; the model expects {list(self.shape)}")
        if array.shape[0] == 0:
            raise BadInput("inputs have no rows")
        return array

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the module on one batch (one forward pass at a time)."""
        import torch

        with self.lock, torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the model returned {type(out).__name__}, not a tensor")
            result: np.ndarray = out.to("cpu").numpy()
        return result


@dataclass
class Served:
    """One loaded model version and what ``/version`` says about it."""

    pyfunc: Any
    info: dict[str, str | None]
    tensor: TensorPath | None
    input_schema: Any

    @property
    def version(self) -> str:
        """Return the model version, for metric labels."""
        return str(self.info.get("model_version") or "")


# What loading a Shipyard model (MLflow's PyTorch flavour) imports: seconds on a small machine. A server started
# without a model imports them in the background at once, so the first rollout does not wait for them.
RUNTIME_MODULES = ("mlflow.pyfunc", "mlflow.pytorch", "mlflow.pyfunc.scoring_server")


def preload() -> None:
    """Import what loading a model needs (see ``RUNTIME_MODULES``); a failure only logs (the load will say)."""
    for name in RUNTIME_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - only a head start: the real load reports the error
            log.warning("could not preload %s: %s: %s", name, type(exc).__name__, exc)
            return
    log.info("model runtime loaded (%s)", ", ".join(RUNTIME_MODULES))


def load(model_uri: str, model_name: str, model_version: str) -> Served:
    """Load ``model_uri`` and find its direct tensor path, if it has one."""
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(model_uri)
    schema = pyfunc.metadata.get_input_schema()
    tensor = _tensor_path(pyfunc, schema)
    run_id = pyfunc.metadata.run_id
    info: dict[str, str | None] = {
        "model_name": model_name, "model_version": model_version, "model_uri": model_uri, "run_id": run_id,
        "mlflow_version": mlflow.__version__, "path": "tensor" if tensor else "pyfunc", **_lineage(run_id),
    }
    log.info("loaded %s (run %s, %s path)", model_uri, run_id, info["path"])
    return Served(pyfunc=pyfunc, info=info, tensor=tensor, input_schema=schema)


def _tensor_path(pyfunc: Any, schema: Any) -> TensorPath | None:
    """Return the direct path for a PyTorch model whose signature is one unnamed tensor."""
    if "pytorch" not in pyfunc.metadata.flavors or schema is None or not schema.is_tensor_spec():
        return None
    specs = schema.inputs
    if len(specs) != 1 or specs[0].name is not None:
        return None
    impl = pyfunc._model_impl  # MLflow's _PyTorchWrapper: the module and the device it was loaded to
    module, device = getattr(impl, "pytorch_model", None), getattr(impl, "device", "cpu")
    if module is None:
        return None
    return TensorPath(module=module, device=str(device), shape=tuple(specs[0].shape), dtype=specs[0].type)


def _lineage(run_id: str | None) -> dict[str, str | None]:
    """Return the dataset and dataset version the run was trained on (tags Shipyard's registration sets)."""
    if not run_id:
        return {"dataset": None, "dataset_version": None}
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        tags = MlflowClient().get_run(run_id).data.tags
    except MlflowException as exc:
        log.warning("cannot read the tags of run %s: %s", run_id, exc.message)
        tags = {}
    return {"dataset": tags.get("shipyard.dataset"), "dataset_version": tags.get("shipyard.dataset_version")}
