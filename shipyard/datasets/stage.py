"""Stage a source (local directory, glob or fsspec URI) into the store as an immutable version.

Order matters, so that nothing a failed or concurrent staging leaves behind looks complete:

1. list the source and check every name; 2. hash every file (a stat-keyed cache skips unchanged local
files); 3. if the version's manifest exists, stop: it is already staged; 4. read and validate every file
(format, schema across shards, not empty), writing the manifest's shards locally; 5. upload the objects
the store lacks, verified; 6. store the shards, then write the manifest head, create-only. A staging
killed before 6 leaves only content-addressed objects and shards, which no head names yet and which the
next staging reuses (or ``shipyard data gc`` removes).

Files stream through each step in path order with a bounded number in flight, and the list between
steps lives in temporary files (:mod:`shipyard.datasets.worklist`), so memory stays flat whatever the
number of files.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shipyard.datasets.hashing import HashCache, hash_file
from shipyard.datasets.inspect import describe, file_format
from shipyard.datasets.manifest import FileEntry, Manifest, VersionHasher, manifest_key
from shipyard.datasets.shards import ShardWriter, store_shards
from shipyard.datasets.source import Source, SourceFile, list_source
from shipyard.datasets.transfer import Blob, StageOptions, in_order, upload
from shipyard.datasets.validate import Checker
from shipyard.datasets.versions import iter_files, latest, load_manifest
from shipyard.datasets.worklist import WorkList
from shipyard.errors import DatasetError
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
        self._done = 0  # counted by workers, under the lock
        self._done_here = 0  # counted by the caller's thread alone: no lock, it runs once per file
        self._lock = threading.Lock()

    def start(self, phase: str, total: int, unit: str = "bytes") -> None:
        with self._lock:
            self.phase, self.total, self.unit, self._done, self._done_here = phase, total, unit, 0, 0
        self.tick()

    def add(self, amount: int) -> None:
        with self._lock:
            self._done += amount

    def grow(self, amount: int, done: bool = False) -> None:
        """Add to the total (caller's thread only), and to what is done if ``done``."""
        self.total += amount
        if done:
            self._done_here += amount

    def tick(self) -> None:
        if self.progress is not None:
            with self._lock:
                event = StageProgress(self.phase, min(self._done + self._done_here, self.total), self.total,
                                      self.unit)
            self.progress(event)

    def finish(self) -> None:
        with self._lock:
            self._done, self._done_here = self.total, 0
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
    with tempfile.TemporaryDirectory(prefix="shipyard-stage-") as tmp, \
            ThreadPoolExecutor(options.jobs, thread_name_prefix="stage-read") as pool, \
            closing(WorkList(Path(tmp))) as work:
        version, hashed = _hash_source(src, hash_cache, pool, report, work, 4 * options.jobs)
        if store.exists(*manifest_key(name, version)):
            log.info("dataset %s version %s is already staged", name, version)
            return StageResult(load_manifest(store, name, version), False, 0, 0, hashed)
        previous = latest(store, name)
        if previous is not None:
            work.remember(iter_files(store, previous))
        checker = Checker(source)
        shards = _describe_all(src, work, pool, report, checker, ShardWriter(Path(tmp)), 4 * options.jobs)
        schemas = checker.finish()
        report.start("upload", work.plan())
        uploaded, sent = upload(store, src, (Blob(sha256=s, file=f) for f, s in work.missing()), options,
                                report.add, report.tick)
        report.finish()
        store_shards(store, name, shards)
    manifest = Manifest(dataset=name, version=version, source=source, created_at=datetime.now(UTC), schemas=schemas,
                        file_count=checker.files, total_bytes=checker.total_bytes,
                        total_rows=checker.total_rows if checker.tabular else None, shards=[s for s, _ in shards])
    return _publish(store, manifest, uploaded, sent, hashed)


def find_staged(store: Store, name: str, source: str, *, options: StageOptions | None = None,
                hash_cache: Path | None = None) -> Manifest | None:
    """Return the version of ``name`` that holds exactly ``source``'s files, or None if none does yet.

    Steps 1-3 of :func:`stage` without the rest: it writes nothing to the store (only the local hash cache).
    """
    options = options or StageOptions()
    src = list_source(source)
    with tempfile.TemporaryDirectory(prefix="shipyard-stage-") as tmp, \
            ThreadPoolExecutor(options.jobs, thread_name_prefix="stage-read") as pool, \
            closing(WorkList(Path(tmp))) as work:
        version, _ = _hash_source(src, hash_cache, pool, _Reporter(None), work, 4 * options.jobs)
    return load_manifest(store, name, version) if store.exists(*manifest_key(name, version)) else None


def _hash_source(src: Source, hash_cache: Path | None, pool: ThreadPoolExecutor, report: _Reporter,
                 work: WorkList, window: int) -> tuple[str, int]:
    """Hash every file through the hash cache at ``hash_cache`` (None: no cache); see :func:`_hash_all`."""
    cache = HashCache(hash_cache) if hash_cache is not None else None
    try:
        return _hash_all(src, cache, pool, report, work, window)
    finally:
        if cache is not None:
            cache.close()


def _hash_all(src: Source, cache: HashCache | None, pool: ThreadPoolExecutor, report: _Reporter, work: WorkList,
              window: int) -> tuple[str, int]:
    """Hash every file (cache hits in this thread, the rest in the pool); return the version id and the count
    of files read."""
    report.start("hash", 0)
    version, hashed, count = VersionHasher(), 0, 0

    def submitted() -> Iterator[tuple[SourceFile, Future[tuple[str, bool]] | tuple[str, bool]]]:
        for file in src.files():
            known = cache.get(file) if cache is not None else None
            report.grow(file.size, done=known is not None)
            if known is not None:
                yield file, (known, True)
            else:
                yield file, pool.submit(hash_file, src, file, cache, report.add)

    for file, (sha, cached) in in_order(submitted(), window, report.tick):
        work.add(file, sha)
        version.add(file.rel, file.size, sha)
        hashed += not cached
        count += 1
    work.flush()
    if not count:
        raise DatasetError(f"dataset source {src.uri} holds no files (an empty dataset cannot be staged)")
    report.finish()
    return version.version(), hashed


def _describe_all(src: Source, work: WorkList, pool: ThreadPoolExecutor, report: _Reporter, checker: Checker,
                  shards: ShardWriter, window: int) -> list[tuple[str, Path]]:
    """Read each file's format summary (reusing what an earlier version recorded for the same bytes), check it
    against the others and write it into the manifest's shards."""
    report.start("inspect", 0, "files")

    def submitted() -> Iterator[tuple[SourceFile, Future[FileEntry] | FileEntry]]:
        for file, sha in work.files():
            seen = work.known(sha)
            reuse = seen is not None and seen.format == file_format(file.rel)
            report.grow(1, done=reuse)
            if seen is not None and reuse:
                yield file, seen.model_copy(update={"path": file.rel})
            else:
                yield file, pool.submit(_describe, src, file, sha, report)

    for _, entry in in_order(submitted(), window, report.tick):
        checker.add(entry)
        shards.add(entry)
    report.finish()
    return shards.finish()


def _describe(src: Source, file: SourceFile, sha: str, report: _Reporter) -> FileEntry:
    entry = describe(src, file, sha)
    report.add(1)
    return entry


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
