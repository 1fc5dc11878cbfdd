"""Lineage as model-version tags: what any MLflow client can read about where a version came from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from shipyard.settings import Settings, TrainMode
from shipyard.storage import Store
from shipyard.training import TrainResult

TAG_TRAIN_KEY = "shipyard.train_key"
TAG_DATASET = "shipyard.dataset"
TAG_DATASET_VERSION = "shipyard.dataset_version"
TAG_MANIFEST = "shipyard.dataset_manifest"
TAG_ENTRYPOINT = "shipyard.recipe.entrypoint"
TAG_CODE_HASH = "shipyard.recipe.code_hash"
TAG_GIT_COMMIT = "shipyard.git.commit"
TAG_GIT_DIRTY = "shipyard.git.dirty"
TAG_FLOW_RUN = "shipyard.prefect.flow_run_id"
TAG_FLOW_RUN_URL = "shipyard.prefect.flow_run_url"
TAG_IMAGE = "shipyard.image"
TAG_DEVICE = "shipyard.device"
TAG_GPU = "shipyard.gpu"
METRIC_TAG_PREFIX = "shipyard.metric."


class RunContext(BaseModel):
    """Where the registering code runs, handed in by the orchestration layer (the core knows no Prefect)."""

    model_config = ConfigDict(frozen=True)

    flow_run_id: str | None = None
    flow_run_url: str | None = None


def lineage_tags(result: TrainResult, store: Store, settings: Settings, context: RunContext) -> dict[str, str]:
    """Return the tags that say what a version was trained from, where and by which run."""
    tags = {
        TAG_TRAIN_KEY: result.key,
        TAG_DATASET: result.dataset.name,
        TAG_DATASET_VERSION: result.dataset.version,
        TAG_MANIFEST: result.dataset.manifest_url(store),
        TAG_ENTRYPOINT: result.code.entrypoint,
        TAG_CODE_HASH: result.code.hash,
        TAG_DEVICE: result.device,
        TAG_GPU: result.gpu or "none",
    }
    if result.code.git_commit:
        tags[TAG_GIT_COMMIT] = result.code.git_commit
        tags[TAG_GIT_DIRTY] = str(bool(result.code.git_dirty)).lower()
    if context.flow_run_id:
        tags[TAG_FLOW_RUN] = context.flow_run_id
    if context.flow_run_url:
        tags[TAG_FLOW_RUN_URL] = context.flow_run_url
    if settings.train_mode is TrainMode.cluster:
        tags[TAG_IMAGE] = settings.image
    tags.update({f"{METRIC_TAG_PREFIX}{k}": f"{v:.6g}" for k, v in result.metrics.items()})
    return tags


def describe(result: TrainResult, metric: str, gate: str) -> str:
    """Return the version's one-line description: data version, headline metric, gate decision."""
    value = result.metrics.get(metric)
    shown = f"{metric}={value:.4f}" if value is not None else f"no {metric}"
    return f"Trained on {result.dataset}; {shown} (validation); gate: {gate}"
