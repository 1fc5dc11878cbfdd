"""The rollout flow: serve a chosen registered version, with the checks the pipeline's roll-out makes."""

# No `from __future__ import annotations`: a worker loads this file by path and builds the parameter
# model from the annotations.
from prefect import flow
from prefect.transactions import transaction

from shipyard.params import RolloutParams
from shipyard.rollout.base import ModelRef, RolloutResult
from tasks.rollout import hold_champion, promote_version, roll_out


@flow
def rollout_flow(model_name: str, version: str,
                 rollout: RolloutParams = RolloutParams()) -> RolloutResult:  # noqa: B008 - frozen pydantic default
    """Serve one registered version and make it the champion, or change nothing.

    1. Remember where the `champion` alias points.
    2. Point `champion` at the chosen version.
    3. Roll out on the configured target (SHIPYARD_ROLLOUT_TARGET): load and warm it beside the live
       version, check its answers on its input example against mlflow.pyfunc.load_model, switch traffic.
    4. On any failure the old version keeps serving and `champion` goes back to it (one transaction).
    """
    model = ModelRef(model_name=model_name, version=version)
    with transaction():
        hold_champion(model_name)
        promote_version(model)
        return roll_out(model, None, rollout)
