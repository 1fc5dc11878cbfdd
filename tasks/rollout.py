"""Task: roll the champion out to the local inference server and smoke-test it."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from shipyard.params import RolloutParams
from shipyard.registry import Registration
from shipyard.serving.local import Rollout
from shipyard.serving.local import roll_out as roll_out_locally
from shipyard.settings import load_settings


@task(cache_policy=NO_CACHE)
def roll_out(registration: Registration, params: RolloutParams) -> Rollout:
    """Serve the champion version; a failed start or smoke test restores the previous server."""
    logger = get_run_logger()
    settings = load_settings()
    version = registration.champion_version or registration.version  # the flow rolls out champions only
    rollout = roll_out_locally(settings, registration.model_name, version, settings.resolved_mlflow_uri(),
                               registration.input_example if params.smoke_test else None)
    verb = "already serving" if rollout.reused else "now serving"
    logger.info("%s %s version %s at %s", verb, registration.model_name, version, rollout.url)
    if rollout.predictions is not None:
        logger.info("smoke test passed: %d predictions from %s/invocations", len(rollout.predictions), rollout.url)
    return rollout
