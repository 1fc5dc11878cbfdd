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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shipyard.datasets.manifest import FileEntry, object_key
from shipyard.datasets.source import check_name
from shipyard.datasets.versions import load_manifest
from shipyard.errors import DatasetError
from shipyard.storage import Store

log = logging.getLogger(__name__)


def pull(store: Store, name: str, version: str, cache_dir: Path, jobs: int = 8) -> Path:
    """Materialise exactly ``version`` of ``name`` under ``cache_dir`` and return its directory."""
    target = cache_dir / "versions" / name / version
    if target.exists():
        log.info("dataset %s@%s already pulled to %s", name, version, target)
        return target
    manifest = load_manifest(store, name, version)
    for entry in manifest.files:  # a manifest is data: never let it write outside the target
        check_name(entry.path, entry.path)
    unique = list({e.sha256: e for e in manifest.files}.values())
    with ThreadPoolExecutor(jobs, thread_name_prefix="pull") as pool:
        list(pool.map(lambda e: _fetch(store, e, cache_dir / "objects"), unique))
    staging = target.with_name(f".{version}.{uuid.uuid4().hex}")
    for entry in manifest.files:
        dest = staging / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(cache_dir / "objects" / entry.sha256, dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, target)
    except OSError:  # a concurrent pull finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    log.info("pulled dataset %s@%s (%d files) to %s", name, version, len(manifest.files), target)
    return target


def _fetch(store: Store, entry: FileEntry, objects: Path) -> None:
    """Download one object into the cache unless it is there, and check its hash before keeping it."""
    blob = objects / entry.sha256
    if blob.exists():
        return
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
    finally:
        if tmp.exists():
            tmp.unlink()
