"""Checks across the files of a dataset before anything is published: consistent shards, not empty."""

from __future__ import annotations

from shipyard.datasets.inspect import TABULAR, describe
from shipyard.datasets.manifest import FileEntry
from shipyard.datasets.source import list_source
from shipyard.errors import DatasetError

_EXTENSIONS = {"parquet": "parquet", "csv": "csv", "npz": "npz"}


def shard_group(entry: FileEntry) -> str:
    """Name the group of shards a tabular file belongs to: its directory and format ('train/*.parquet')."""
    directory = entry.path.rsplit("/", 1)[0] + "/" if "/" in entry.path else ""
    return f"{directory}*.{_EXTENSIONS[entry.format]}"


class Checker:
    """Check entries as they stream past, in path order, failing on the first inconsistency with its file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.files = self.tabular = self.tabular_with_rows = self.total_bytes = self.total_rows = 0
        self.first: dict[str, FileEntry] = {}  # the first shard of each group: the others must match it

    def add(self, entry: FileEntry) -> None:
        """Count one entry and check it against its shard group."""
        self.files += 1
        self.total_bytes += entry.size
        if entry.format in TABULAR:
            self.tabular += 1
            self.tabular_with_rows += entry.rows != 0
            self.total_rows += entry.rows or 0
        if entry.format in TABULAR and entry.columns is not None:
            group = shard_group(entry)
            first = self.first.setdefault(group, entry)
            problem = schema_difference(first, entry) if first is not entry else None
            if problem:
                raise DatasetError(f"{entry.path}: schema differs from {first.path}: {problem} "
                                   f"(every shard in {group} must have the same columns)")

    def finish(self) -> dict[str, dict[str, str]]:
        """Fail if the dataset is empty; return the schema of each shard group."""
        if not self.files:
            raise DatasetError(f"dataset source {self.source} holds no files (an empty dataset cannot be staged)")
        if self.total_bytes == 0:
            raise DatasetError(f"dataset source {self.source} holds only empty files")
        if self.tabular and self.tabular == self.files and not self.tabular_with_rows:
            raise DatasetError(f"dataset source {self.source} has no rows: every file ({self.tabular}) is empty")
        return {group: dict(self.first[group].columns or {}) for group in sorted(self.first)}


def schema_difference(expected: FileEntry, actual: FileEntry) -> str | None:
    """Describe how ``actual``'s columns differ from ``expected``'s, or None if they match.

    CSV types are inferred per file, so CSV shards must share column names and order only.
    """
    want, got = expected.columns or {}, actual.columns or {}
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    if missing:
        return f"column '{missing[0]}' is missing" + (f" ({len(missing) - 1} more)" if len(missing) > 1 else "")
    if extra:
        return f"unexpected column '{extra[0]}'" + (f" ({len(extra) - 1} more)" if len(extra) > 1 else "")
    if list(want) != list(got):
        return f"columns are in a different order ({', '.join(got)} instead of {', '.join(want)})"
    if expected.format != "csv":
        for name, kind in want.items():
            if got[name] != kind:
                return f"column '{name}' is {got[name]}, expected {kind}"
    return None


def read_schemas(source: str) -> dict[str, dict[str, str]]:
    """Read and check every file of ``source`` as staging would, uploading nothing; return each shard group's schema.

    For checks before any work starts (``shipyard run``): a source staging would refuse fails here, naming the file.
    """
    src = list_source(source)
    checker = Checker(source)
    for file in sorted(src.files(), key=lambda f: f.rel):
        checker.add(describe(src, file, ""))
    return checker.finish()
