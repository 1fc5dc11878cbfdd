"""Task: log the training run to MLflow, register a version, promote it if it beats the champion."""

from __future__ import annotations

import warnings

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from shipyard import registry
from shipyard.errors import RegistryError
from shipyard.params import RegisterParams
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from shipyard.training import TrainResult, load_model, load_recipe
from tasks.retry import transient_only


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def register_model(result: TrainResult, params: RegisterParams) -> registry.Registration:
    """Register the trained model (once per training run) and move `champion` only if it wins."""
    logger = get_run_logger()
    settings = load_settings()
    store = filesystem(settings)
    registry.check(settings)
    client = registry.client(settings)
    recipe = load_recipe(result.params.entrypoint, result.params)
    example = recipe.input_example()
    existing = registry.find_registered(client, params.model_name, result.key)
    if existing is not None:
        run_id, version, reused = existing.run_id, str(existing.version), True
        experiment_id = client.get_run(run_id).info.experiment_id
        logger.info("cache hit: training %s is already %s version %s; not registering again",
                    result.key, params.model_name, version)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's "source can be interpreted in multiple ways"
            run_id, experiment_id, version = registry.log_and_register(
                client, settings, store, result, recipe.serving_model(load_model(store, result)), example,
                params.model_name)
        reused = False
        logger.info("registered %s version %s from MLflow run %s", params.model_name, version, run_id)
    with registry.translate(settings.resolved_mlflow_uri()):
        promoted = registry.promote_if_better(client, params.model_name, version, params.metric,
                                              params.promotion_margin)
        champion = registry.champion(client, params.model_name)
    if champion is None:  # promote_if_better always leaves a champion; someone removed it meanwhile
        raise RegistryError(f"model {params.model_name} lost its '{registry.CHAMPION}' alias during registration")
    return registry.Registration(
        model_name=params.model_name, version=version, run_id=run_id, experiment_id=str(experiment_id),
        promoted=promoted, champion_version=str(champion.version), reused=reused,
        input_example=example.tolist(),
    )
