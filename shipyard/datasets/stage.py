"""Stage a source (local directory, glob or fsspec URI) into the store as an immutable version."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import fsspec

from shipyard.datasets.manifest import FileEntry, Manifest, object_key, version_id
from shipyard.datasets.inspect import describe_file
from shipyard.errors import DatasetError
from shipyard.storage import AlreadyExists, Store

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
CHUNK = 8 * 2**20


@dataclass(frozen=True)
class StageResult:
    """What staging did."""

    manifest: Manifest
    created: bool
    files_uploaded: int
    bytes_uploaded: int

    @property
    def version(self) -> str:
        """Return the version id."""
        return self.manifest.version


def _source_files(source: str) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    fs, root = fsspec.core.url_to_fs(source)
    if any(ch in root for ch in "*?["):
        files = sorted(p for p in fs.glob(root) if fs.isfile(p))
        base = root.split("*", 1)[0].rsplit("/", 1)[0]
    elif fs.isdir(root):
        files = sorted(p for p in fs.find(root) if not _hidden(p, root))
        base = root
    elif fs.isfile(root):
        files, base = [root], root.rsplit("/", 1)[0]
    else:
        raise DatasetError(f"dataset source {source} does not exist")
    if not files:
        raise DatasetError(f"dataset source {source} holds no files")
    return fs, base.rstrip("/"), files


def _hidden(path: str, root: str) -> bool:
    rel = path[len(root) :].lstrip("/")
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def _hash(fs: fsspec.AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stage_file(store: Store, fs: fsspec.AbstractFileSystem, base: str, path: str) -> tuple[FileEntry, int]:
    rel = path[len(base) :].lstrip("/")
    if ".." in rel.split("/") or rel.startswith("/"):
        raise DatasetError(f"file name {path} would escape the dataset prefix")
    sha = _hash(fs, path)
    entry = describe_file(fs, path, rel, sha)
    if store.exists(*object_key(sha)):
        return entry, 0
    with fs.open(path, "rb") as fh:
        store.write_bytes(fh.read(), *object_key(sha))
    return entry, entry.size


def stage(store: Store, name: str, source: str, progress: Progress | None = None) -> StageResult:
    """Stage ``source`` as a version of dataset ``name``; unchanged files move no bytes."""
    fs, base, files = _source_files(source)
    entries: list[FileEntry] = []
    sent = uploaded = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        for done, (entry, nbytes) in enumerate(pool.map(lambda p: _stage_file(store, fs, base, p), files), 1):
            entries.append(entry)
            sent += nbytes
            uploaded += nbytes > 0
            if progress:
                progress(done, len(files))
    entries.sort(key=lambda e: e.path)
    version = version_id(entries)
    manifest = Manifest(dataset=name, version=version, source=source, created_at=datetime.now(UTC), files=entries)
    created = True
    try:
        store.write_bytes(manifest.model_dump_json(indent=2).encode(), *_manifest_key(name, version), create_only=True)
    except AlreadyExists:
        created = False
        manifest = load_manifest(store, name, version)
    log.info("dataset %s version %s: %s (%d files uploaded, %d bytes)", name, version,
             "staged" if created else "already staged", uploaded, sent)
    return StageResult(manifest=manifest, created=created, files_uploaded=uploaded, bytes_uploaded=sent)


def _manifest_key(name: str, version: str) -> tuple[str, str, str, str]:
    return ("datasets", name, "versions", f"{version}.json")


def load_manifest(store: Store, name: str, version: str) -> Manifest:
    """Read a version's manifest, naming the dataset, version and store if it is missing."""
    if not store.exists(*_manifest_key(name, version)):
        raise DatasetError(
            f"dataset '{name}' has no version {version} under {store.url('datasets', name)} "
            f"(list versions with: shipyard data ls {name})"
        )
    return Manifest.model_validate_json(store.read_bytes(*_manifest_key(name, version)))


def list_versions(store: Store, name: str) -> list[Manifest]:
    """Return a dataset's versions, oldest first."""
    names = [n for n in store.list("datasets", name, "versions") if n.endswith(".json")]
    manifests = [load_manifest(store, name, n.removesuffix(".json")) for n in names]
    return sorted(manifests, key=lambda m: m.created_at)
