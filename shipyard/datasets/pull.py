"""Pull a dataset version to a local directory, through a cache keyed by content hash.

Each object is downloaded once into ``<cache>/objects/<sha256>``, its hash checked, then hard-linked
into ``<cache>/versions/<name>/<version>/<path>``; the version directory appears atomically when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from shipyard.datasets.manifest import FileEntry, Manifest, object_key
from shipyard.datasets.source import check_name
from shipyard.datasets.transfer import cancel_on_failure, in_order
from shipyard.datasets.versions import iter_files, load_manifest
from shipyard.errors import DatasetError
from shipyard.storage import Store

log = logging.getLogger(__name__)


def pull(store: Store, name: str, version: str, cache_dir: Path, jobs: int = 8) -> Path:
    """Materialise exactly ``version`` of ``name`` under ``cache_dir`` and return its directory.

    The file list streams from the manifest's shards with at most a few files per job in flight.
    """
    target = cache_dir / "versions" / name / version
    if target.exists():
        log.info("dataset %s@%s already pulled to %s", name, version, target)
        return target
    manifest = load_manifest(store, name, version)
    staging = target.with_name(f".{version}.{uuid.uuid4().hex}")
    try:
        with ThreadPoolExecutor(jobs, thread_name_prefix="pull") as pool, cancel_on_failure(pool):
            fetched: Iterator[tuple[FileEntry, Future[bool] | bool]] = (
                (e, pool.submit(_fetch, store, e, cache_dir / "objects")) for e in _checked(store, manifest))
            for entry, _ in in_order(fetched, 4 * jobs, lambda: None):
                dest = staging / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(cache_dir / "objects" / entry.sha256, dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
    except OSError:
        if not target.exists():
            raise
        # a concurrent pull finished first; its copy is identical
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("pulled dataset %s@%s (%d files) to %s", name, version, manifest.file_count, target)
    return target


def _checked(store: Store, manifest: Manifest) -> Iterator[FileEntry]:
    for entry in iter_files(store, manifest):  # a manifest is data: never let it write outside the target
        check_name(entry.path, entry.path)
        yield entry


def _fetch(store: Store, entry: FileEntry, objects: Path) -> bool:
    """Download one object into the cache unless it is there, and check its hash before keeping it."""
    blob = objects / entry.sha256
    if blob.exists():
        return False
    blob.parent.mkdir(parents=True, exist_ok=True)
    tmp = blob.with_name(f".{entry.sha256}.{uuid.uuid4().hex}")
    try:
        store.get_file(str(tmp), *object_key(entry.sha256))
        digest = hashlib.sha256()
        with open(tmp, "rb") as fh:
            while chunk := fh.read(2**20):
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            raise DatasetError(f"{entry.path}: object {store.url(*object_key(entry.sha256))} does not match its "
                               f"SHA-256 (the store copy is damaged; stage the dataset again to repair it)")
        os.replace(tmp, blob)
        return True
    finally:
        if tmp.exists():
            tmp.unlink()
