"""Stage a source (local directory, glob or fsspec URI) into the store as an immutable version.

Order matters, so that nothing a failed or concurrent staging leaves behind looks complete:

1. list the source and check every name; 2. hash every file (a stat-keyed cache skips unchanged local
files); 3. if the version's manifest exists, stop: it is already staged; 4. read and validate every file
(format, schema across shards, not empty); 5. upload the objects the store lacks, verified; 6. write the
manifest, create-only. A staging killed before 6 leaves only content-addressed objects, which no
manifest names yet and which the next staging reuses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shipyard.datasets.hashing import HashCache, hash_file
from shipyard.datasets.inspect import describe, file_format
from shipyard.datasets.manifest import FileEntry, Manifest, manifest_key, version_id
from shipyard.datasets.source import Source, list_source
from shipyard.datasets.transfer import Blob, StageOptions, gather, upload
from shipyard.datasets.validate import check_entries
from shipyard.datasets.versions import known_entries, load_manifest
from shipyard.storage import AlreadyExists, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageProgress:
    """Where a staging is: ``phase`` is 'hash', 'inspect' or 'upload'; ``done``/``total`` in ``unit``."""

    phase: str
    done: int
    total: int
    unit: str = "bytes"

    @property
    def fraction(self) -> float:
        """Return the share of this phase that is done, from 0 to 1."""
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)


Progress = Callable[[StageProgress], None]


@dataclass(frozen=True)
class StageResult:
    """What staging did."""

    manifest: Manifest
    created: bool
    files_uploaded: int
    bytes_uploaded: int
    files_hashed: int = 0

    @property
    def version(self) -> str:
        """Return the version id."""
        return self.manifest.version


class _Reporter:
    """Count progress from worker threads; report it from the caller's thread only."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.phase, self.total, self.unit = "", 0, "bytes"
        self._done = 0
        self._lock = threading.Lock()

    def start(self, phase: str, total: int, unit: str = "bytes") -> None:
        with self._lock:
            self.phase, self.total, self.unit, self._done = phase, total, unit, 0
        self.tick()

    def add(self, amount: int) -> None:
        with self._lock:
            self._done += amount

    def tick(self) -> None:
        if self.progress is not None:
            with self._lock:
                event = StageProgress(self.phase, min(self._done, self.total), self.total, self.unit)
            self.progress(event)

    def finish(self) -> None:
        with self._lock:
            self._done = self.total
        self.tick()


def stage(store: Store, name: str, source: str, progress: Progress | None = None, *,
          options: StageOptions | None = None, hash_cache: Path | None = None) -> StageResult:
    """Stage ``source`` as a version of dataset ``name``; unchanged files move no bytes.

    Args:
        progress: called from this thread with a :class:`StageProgress` as each phase advances.
        options: parallelism, multipart sizes and memory budget.
        hash_cache: SQLite file of known hashes of local files; None hashes every file.
    """
    options = options or StageOptions()
    report = _Reporter(progress)
    src = list_source(source)
    cache = HashCache(hash_cache) if hash_cache is not None else None
    with ThreadPoolExecutor(options.jobs, thread_name_prefix="stage-read") as pool:
        try:
            shas, hashed = _hash_all(src, cache, pool, report)
        finally:
            if cache is not None:
                cache.close()
        bare = [FileEntry(path=f.rel, size=f.size, sha256=s, format=file_format(f.rel))
                for f, s in zip(src.files, shas, strict=True)]
        version = version_id(bare)
        if store.exists(*manifest_key(name, version)):
            log.info("dataset %s version %s is already staged", name, version)
            return StageResult(load_manifest(store, name, version), False, 0, 0, hashed)
        known = known_entries(store, name, pool)
        entries = _describe_all(src, shas, known, pool, report)
    schemas = check_entries(entries, source)
    blobs = list({s: Blob(sha256=s, file=f) for f, s in zip(src.files, shas, strict=True) if s not in known}.values())
    report.start("upload", sum(b.file.size for b in blobs))
    uploaded, sent = upload(store, src, blobs, options, report.add, report.tick)
    report.finish()
    manifest = Manifest(dataset=name, version=version, source=source, created_at=datetime.now(UTC),
                        files=entries, schemas=schemas)
    return _publish(store, manifest, uploaded, sent, hashed)


def _hash_all(src: Source, cache: HashCache | None, pool: ThreadPoolExecutor,
              report: _Reporter) -> tuple[list[str], int]:
    report.start("hash", sum(f.size for f in src.files))
    futures = [pool.submit(hash_file, src, f, cache, report.add) for f in src.files]
    results = gather(pool, futures, report.tick)
    report.finish()
    return [sha for sha, _ in results], sum(1 for _, cached in results if not cached)


def _describe_all(src: Source, shas: list[str], known: dict[str, FileEntry], pool: ThreadPoolExecutor,
                  report: _Reporter) -> list[FileEntry]:
    """Read each file's format summary, reusing what an earlier version recorded for the same bytes."""
    report.start("inspect", len(src.files), "files")

    def one(index: int) -> FileEntry:
        file, sha = src.files[index], shas[index]
        seen = known.get(sha)
        if seen is not None and seen.format == file_format(file.rel):
            entry = seen.model_copy(update={"path": file.rel})
        else:
            entry = describe(src, file, sha)
        report.add(1)
        return entry

    entries = gather(pool, [pool.submit(one, i) for i in range(len(src.files))], report.tick)
    report.finish()
    return sorted(entries, key=lambda e: e.path)


def _publish(store: Store, manifest: Manifest, uploaded: int, sent: int, hashed: int) -> StageResult:
    """Write the manifest create-only; if a concurrent staging won, return its (identical) version."""
    try:
        store.write_bytes(manifest.to_json(), *manifest_key(manifest.dataset, manifest.version), create_only=True)
        created = True
    except AlreadyExists:
        manifest, created = load_manifest(store, manifest.dataset, manifest.version), False
    log.info("dataset %s version %s: %s (%d objects uploaded, %d bytes)", manifest.dataset, manifest.version,
             "staged" if created else "already staged", uploaded, sent)
    return StageResult(manifest=manifest, created=created, files_uploaded=uploaded, bytes_uploaded=sent,
                       files_hashed=hashed)
