"""Task: stage a dataset into the store."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from shipyard import datasets
from shipyard.datasets.demo import write_demo_source
from shipyard.datasets.report import manifest_markdown
from shipyard.params import DatasetParams
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from tasks.retry import transient_only

# Caching is content-addressed in the store itself (same bytes, same version), which survives
# across machines and Prefect servers; Prefect's input-hash cache would add nothing.


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def stage_dataset(dataset: DatasetParams) -> datasets.Manifest:
    """Stage the source as an immutable dataset version; an unchanged source uploads nothing."""
    logger = get_run_logger()
    settings = load_settings()
    store = filesystem(settings)
    store.check()
    source = dataset.source
    if source == "demo":
        source = str(write_demo_source(settings.home / "demo" / "digits").resolve())
    progress_id = create_progress_artifact(0.0, description=f"Staging {dataset.name} from {source}")

    def progress(done: int, total: int) -> None:
        if progress_id is not None and (done == total or done % max(1, total // 20) == 0):
            update_progress_artifact(progress_id, 100.0 * done / total)

    result = datasets.stage(store, dataset.name, source, progress=progress)
    if result.created:
        logger.info("staged %s version %s: %d files, %d bytes uploaded", dataset.name, result.version,
                    result.files_uploaded, result.bytes_uploaded)
    else:
        logger.info("cache hit: dataset %s version %s already staged (%d bytes uploaded)", dataset.name,
                    result.version, result.bytes_uploaded)
    create_markdown_artifact(manifest_markdown(result.manifest, store.url("datasets", dataset.name)),
                             key=f"dataset-{dataset.name}", description=f"{dataset.name}@{result.version}")
    return result.manifest
