"""A staging's scratch list on local disk (SQLite): its files and hashes, and the entries it can reuse.

Staging passes over the files three times (hash, inspect, upload); keeping the list in a temporary
database instead of in memory is what bounds memory whatever the number of files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from shipyard.datasets.manifest import FileEntry
from shipyard.datasets.source import SourceFile

_SCHEMA = """
CREATE TABLE files (seq INTEGER PRIMARY KEY, path TEXT, rel TEXT, size INTEGER, sha256 TEXT,
                    dev INTEGER, ino INTEGER, mtime_ns INTEGER, ctime_ns INTEGER);
CREATE TABLE known (sha256 TEXT PRIMARY KEY, entry TEXT NOT NULL);
"""
_INSERT = "INSERT INTO files (path, rel, size, sha256, dev, ino, mtime_ns, ctime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_ALL = "SELECT path, rel, size, sha256, dev, ino, mtime_ns, ctime_ns FROM files ORDER BY seq"
# One file per content that no earlier version holds.
_MISSING = ("SELECT path, rel, size, sha256, dev, ino, mtime_ns, ctime_ns FROM files "
            "WHERE sha256 NOT IN (SELECT sha256 FROM known) GROUP BY sha256")
_MISSING_BYTES = ("SELECT COALESCE(SUM(size), 0) FROM (SELECT size FROM files "
                  "WHERE sha256 NOT IN (SELECT sha256 FROM known) GROUP BY sha256)")


class WorkList:
    """The files of one staging, in path order, with their hashes; and entries earlier versions recorded."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        self._batch: list[tuple[object, ...]] = []

    def add(self, file: SourceFile, sha256: str) -> None:
        """Append the next file (in path order) and its hash."""
        dev, ino, _, mtime, ctime = file.stat or (None, None, None, None, None)
        self._batch.append((file.path, file.rel, file.size, sha256, dev, ino, mtime, ctime))
        if len(self._batch) >= 10_000:
            self.flush()

    def flush(self) -> None:
        """Write the files added so far."""
        self._db.execute("BEGIN")
        self._db.executemany(_INSERT, self._batch)
        self._db.execute("COMMIT")
        self._batch.clear()

    def remember(self, entries: Iterable[FileEntry]) -> None:
        """Record entries an earlier version holds: their objects are stored and their formats known."""
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR IGNORE INTO known VALUES (?, ?)",
                             ((e.sha256, e.model_dump_json()) for e in entries))
        self._db.execute("COMMIT")

    def known(self, sha256: str) -> FileEntry | None:
        """Return an earlier version's entry for these bytes, if any."""
        row = self._db.execute("SELECT entry FROM known WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else FileEntry.model_validate_json(row[0])

    def files(self) -> Iterator[tuple[SourceFile, str]]:
        """Yield every file and its hash, in path order."""
        yield from self._rows(_ALL)

    def missing(self) -> Iterator[tuple[SourceFile, str]]:
        """Yield one file for each content no earlier version holds."""
        yield from self._rows(_MISSING)

    def missing_bytes(self) -> int:
        """Return the size of the contents no earlier version holds."""
        return int(self._db.execute(_MISSING_BYTES).fetchone()[0])

    def _rows(self, query: str) -> Iterator[tuple[SourceFile, str]]:
        for path, rel, size, sha256, dev, ino, mtime, ctime in self._db.execute(query):
            stat = None if dev is None else (dev, ino, size, mtime, ctime)
            yield SourceFile(path=path, rel=rel, size=size, stat=stat), sha256

    def close(self) -> None:
        """Close the database."""
        self._db.close()
