"""Pull a dataset version to a local directory, through a cache keyed by content hash."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from shipyard.datasets.manifest import object_key
from shipyard.datasets.stage import load_manifest
from shipyard.storage import Store

log = logging.getLogger(__name__)


def pull(store: Store, name: str, version: str, cache_dir: Path) -> Path:
    """Materialise exactly ``version`` of ``name`` under ``cache_dir`` and return its directory."""
    target = cache_dir / "versions" / name / version
    if target.exists():
        log.info("dataset %s@%s already pulled to %s", name, version, target)
        return target
    manifest = load_manifest(store, name, version)
    staging = target.with_name(f".{version}.{uuid.uuid4().hex}")
    for entry in manifest.files:
        blob = cache_dir / "objects" / entry.sha256
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_name(f".{entry.sha256}.{uuid.uuid4().hex}")
            store.get_file(str(tmp), *object_key(entry.sha256))
            os.replace(tmp, blob)
        dest = staging / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(blob, dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, target)
    except OSError:  # a concurrent pull finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target
