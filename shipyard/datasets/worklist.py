"""A staging's scratch list on local disk: its files and hashes, and the entries it can reuse.

Staging passes over the files three times (hash, inspect, upload); keeping the list in temporary files
instead of in memory is what bounds memory whatever the number of files. The file list is a plain
tab-separated file (appending a line costs a fraction of an SQLite insert, and a re-staging writes one per
file before it knows it has nothing to do); the entries of the previous version and the contents to upload
are SQLite tables, for lookups and de-duplication.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from shipyard.datasets.manifest import FileEntry
from shipyard.datasets.source import SourceFile
from shipyard.errors import DatasetError

_SCHEMA = """
CREATE TABLE known (sha256 TEXT PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE todo (sha256 TEXT PRIMARY KEY, line TEXT NOT NULL);
"""


class WorkList:
    """The files of one staging, in path order, with their hashes; and entries earlier versions recorded."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / "files.tsv"
        self._out = open(self._path, "w", encoding="utf-8", newline="\n")
        self._db = sqlite3.connect(directory / "work.sqlite", isolation_level=None)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)

    def add(self, file: SourceFile, sha256: str) -> None:
        """Append the next file (in path order) and its hash."""
        if "\t" in file.path or "\n" in file.path:
            raise DatasetError(f"{file.path!r}: tabs and line breaks in a source path are not supported")
        self._out.write(f"{file.rel}\t{file.size}\t{sha256}\t{_stat(file)}\t{file.path}\n")

    def flush(self) -> None:
        """Make the files added so far readable."""
        self._out.flush()

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
        self.flush()
        with open(self._path, encoding="utf-8", newline="\n") as lines:
            for line in lines:
                yield _parse(line)

    def plan(self) -> int:
        """Pick one file for each content no earlier version holds; return their total size."""
        self._db.execute("BEGIN")
        for file, sha256 in self.files():
            self._db.execute("INSERT OR IGNORE INTO todo SELECT ?, ? WHERE NOT EXISTS "
                             "(SELECT 1 FROM known WHERE sha256 = ?)",
                             (sha256, f"{file.rel}\t{file.size}\t{sha256}\t{_stat(file)}\t{file.path}\n", sha256))
        self._db.execute("COMMIT")
        return sum(int(line.split("\t", 2)[1]) for (line,) in self._db.execute("SELECT line FROM todo"))

    def missing(self) -> Iterator[tuple[SourceFile, str]]:
        """Yield the files :meth:`plan` picked."""
        for (line,) in self._db.execute("SELECT line FROM todo ORDER BY rowid"):
            yield _parse(line)

    def close(self) -> None:
        """Close the files."""
        self._out.close()
        self._db.close()


def _stat(file: SourceFile) -> str:
    if file.stat is None:
        return "\t\t\t\t"
    dev, ino, size, mtime, ctime = file.stat
    return f"{dev}\t{ino}\t{size}\t{mtime}\t{ctime}"


def _parse(line: str) -> tuple[SourceFile, str]:
    rel, size, sha256, dev, ino, size_again, mtime, ctime, path = line.rstrip("\n").split("\t")
    stat = (int(dev), int(ino), int(size_again), int(mtime), int(ctime)) if dev else None
    return SourceFile(path, rel, int(size), stat), sha256
