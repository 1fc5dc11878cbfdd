"""Task: stage a dataset into the store."""

from __future__ import annotations

import re
from uuid import UUID

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from shipyard import datasets
from shipyard.datasets.demo import resolve_source
from shipyard.datasets.report import manifest_markdown, totals
from shipyard.params import DatasetParams
from shipyard.settings import load_settings
from shipyard.storage import Store, filesystem
from tasks.events import emit_dataset_staged
from tasks.retry import transient_only

# Caching is content-addressed in the store itself (same bytes, same version), which survives
# across machines and Prefect servers; Prefect's input-hash cache would add nothing.

# Share of the progress bar each phase fills: hashing, reading formats, uploading.
PHASES = {"hash": (0.0, 40.0), "inspect": (40.0, 50.0), "upload": (50.0, 100.0)}


class _ProgressArtifact:
    """Mirror staging progress into a Prefect progress artifact, one update per whole percent."""

    def __init__(self, artifact_id: UUID | None) -> None:
        self.artifact_id = artifact_id
        self.shown = -1

    def __call__(self, event: datasets.StageProgress) -> None:
        start, end = PHASES.get(event.phase, (0.0, 100.0))
        percent = int(start + (end - start) * event.fraction)
        if self.artifact_id is not None and percent > self.shown:
            self.shown = percent
            update_progress_artifact(self.artifact_id, float(percent))


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_only)
def stage_dataset(dataset: DatasetParams) -> datasets.Manifest:
    """Stage the source as an immutable dataset version; an unchanged source uploads nothing."""
    logger = get_run_logger()
    settings = load_settings()
    store = filesystem(settings)
    store.check()
    if dataset.version is not None:  # already staged (the new-data trigger): use exactly that version
        manifest = datasets.load_staged(store, dataset.name, dataset.version)
        logger.info("using staged dataset %s version %s (%s)", dataset.name, manifest.version, totals(manifest))
        _publish_manifest(store, manifest)
        return manifest
    source = resolve_source(dataset.source, settings.home)
    artifact = create_progress_artifact(0.0, description=f"Staging {dataset.name} from {source}")
    progress = _ProgressArtifact(artifact if isinstance(artifact, UUID) else None)
    result = datasets.stage(store, dataset.name, source, progress=progress,
                            hash_cache=settings.hash_cache())
    progress(datasets.StageProgress("upload", 1, 1))
    if result.created:
        logger.info("staged %s version %s (%s): %d objects, %d bytes uploaded", dataset.name, result.version,
                    totals(result.manifest), result.files_uploaded, result.bytes_uploaded)
        emit_dataset_staged(store, result.manifest, "pipeline")
    else:
        logger.info("cache hit: dataset %s version %s already staged (0 bytes uploaded)", dataset.name, result.version)
    _publish_manifest(store, result.manifest)
    return result.manifest


def artifact_key(dataset: str) -> str:
    """Return the stable key of a dataset's manifest artifact (keys allow only [a-z0-9-])."""
    return "dataset-" + re.sub(r"[^a-z0-9-]", "-", dataset)


def _publish_manifest(store: Store, manifest: datasets.Manifest) -> None:
    create_markdown_artifact(manifest_markdown(manifest, store.url("datasets", manifest.dataset),
                                               files=datasets.iter_files(store, manifest)),
                             key=artifact_key(manifest.dataset), description=f"{manifest.dataset}@{manifest.version}")
