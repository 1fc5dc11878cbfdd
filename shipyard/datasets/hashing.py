"""SHA-256 of source files, with a local cache that makes re-staging an unchanged source nearly free.

The cache maps a local file's identity and stat (device, inode, size, mtime and ctime in nanoseconds) to
its SHA-256, like git's index. A same-size edit changes ctime even when mtime is forced back, so it is
hashed again. File timestamps come from a coarse clock, so an entry is only recorded when the file was
last changed well before it was hashed ("racily clean" files, in git's words, are hashed every time).
New entries are committed in batches: one commit per file would make a first staging of many small files
wait on the disk for each. Files come in path order, so lookups walk one sorted scan of the table alongside
them instead of querying once per file.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shipyard.datasets.source import Source, SourceFile
from shipyard.errors import DatasetError

log = logging.getLogger(__name__)

CHUNK = 2**20
RACY_NS = 100_000_000  # coarse file-timestamp clocks lag by a few ms; 100 ms is safely more
BATCH = 2000  # new entries per commit

_SCHEMA = """CREATE TABLE IF NOT EXISTS hashes (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    sha256 TEXT NOT NULL)"""


class HashCache:
    """A SQLite file of known hashes, safe to share between concurrent stagings."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[object, ...]] = []
        self._flushed = time.monotonic()
        self._reader: sqlite3.Connection | None = None
        self._scan: Iterator[tuple[Any, ...]] | None = None
        self._row: tuple[Any, ...] | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a lost entry only means hashing that file again
            self._db.execute(_SCHEMA)
        return self._db

    def get(self, file: SourceFile) -> str | None:
        """Return the cached hash if the file's identity and stat are unchanged (files in path order are fastest)."""
        if file.stat is None:
            return None
        row = self._scanned(file.path)
        if row is None:
            with self._lock:
                row = self._conn().execute("SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha256 FROM hashes "
                                           "WHERE path = ?", (file.path,)).fetchone()
        return str(row[6]) if row is not None and row[1:6] == file.stat else None

    def _scanned(self, path: str) -> tuple[Any, ...] | None:
        """Advance a sorted scan of the table (on a connection of its own) to ``path``; its row if there."""
        if self._scan is None:
            self._conn()  # creates the table
            self._reader = reader = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._scan = iter(reader.execute("SELECT path, dev, ino, size, mtime_ns, ctime_ns, sha256 FROM hashes "
                                             "WHERE path >= ? ORDER BY path", (path,)))
            self._row = next(self._scan, None)
        if self._row is not None and self._row[0] > path:  # out of order: leave it to a point query
            return None
        while self._row is not None and self._row[0] < path:
            self._row = next(self._scan, None)
        return self._row if self._row is not None and self._row[0] == path else None

    def put(self, file: SourceFile, sha256: str, hashed_at_ns: int) -> None:
        """Remember a hash, unless the file changed too close to when it was hashed to trust its stat."""
        if file.stat is None or max(file.stat[3], file.stat[4]) > hashed_at_ns - RACY_NS:
            return
        with self._lock:
            self._pending.append((file.path, *file.stat, sha256))
            if len(self._pending) >= BATCH or time.monotonic() - self._flushed > 1.0:
                self._flush()

    def _flush(self) -> None:
        """Write pending entries in one short transaction (other stagings may share the file)."""
        if self._pending:
            with self._conn() as conn:
                conn.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", self._pending)
            self._pending.clear()
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Write what is pending and close the database."""
        if self._reader is not None:
            self._reader.close()
            self._reader = self._scan = self._row = None
        if self._db is not None or self._pending:
            with self._lock:
                self._flush()
                if self._db is not None:
                    self._db.close()
                    self._db = None


def hash_file(source: Source, file: SourceFile, cache: HashCache | None = None,
              on_bytes: Callable[[int], None] | None = None) -> tuple[str, bool]:
    """Return the file's SHA-256 and whether it came from the cache, reading in bounded chunks."""
    if cache is not None and (known := cache.get(file)) is not None:
        return known, True
    started = time.time_ns()
    digest = hashlib.sha256()
    read = 0
    try:
        with source.open(file) as fh, memoryview(bytearray(CHUNK)) as buffer:
            while n := fh.readinto(buffer):
                digest.update(buffer[:n])
                read += n
                if on_bytes:
                    on_bytes(n)
    except OSError as exc:
        raise DatasetError(f"{file.rel}: cannot read ({exc.strerror or exc})") from exc
    if read != file.size:
        raise DatasetError(f"{file.rel}: changed while staging ({file.size} bytes listed, {read} read); stage again")
    if cache is not None:
        cache.put(file, digest.hexdigest(), started)
    return digest.hexdigest(), False
