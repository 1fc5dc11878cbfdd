"""Task: train a model on a staged dataset version (in this process, on the best local device)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from shipyard import datasets
from shipyard.params import TrainParams
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from shipyard.training import EpochMetrics, TrainResult, cached_result, train, training_key
from tasks.retry import transient_only


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def fit_model(dataset: str, dataset_version: str, params: TrainParams) -> TrainResult:
    """Pull exactly the staged version, train (resuming from the newest checkpoint) and save the weights."""
    logger = get_run_logger()
    settings = load_settings()
    store = filesystem(settings)
    key = training_key(dataset, dataset_version, params)
    cached = cached_result(store, key)
    if cached is not None:
        logger.info("cache hit: training %s on %s@%s already finished (%s); not retraining",
                    key, dataset, dataset_version, cached.metrics)
        return cached
    data_dir = datasets.pull(store, dataset, dataset_version, settings.home / "cache" / "datasets")

    def on_epoch(entry: EpochMetrics) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in entry.metrics.items())
        logger.info("epoch %d/%d train_loss=%.4f %s (%.2fs)", entry.epoch, params.epochs, entry.train_loss,
                    shown, entry.seconds)

    result = train(store, dataset, dataset_version, params, data_dir, on_epoch=on_epoch)
    create_table_artifact(
        [{"epoch": h.epoch, "train_loss": round(h.train_loss, 5), **{k: round(v, 5) for k, v in h.metrics.items()}}
         for h in result.history],
        key="training-metrics", description=f"training {key} on {result.device}",
    )
    return result
