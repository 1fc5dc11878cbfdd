"""Checks across the files of a dataset before anything is published: consistent shards, not empty."""

from __future__ import annotations

from collections import defaultdict

from shipyard.datasets.inspect import TABULAR
from shipyard.datasets.manifest import FileEntry
from shipyard.errors import DatasetError

_EXTENSIONS = {"parquet": "parquet", "csv": "csv", "npz": "npz"}


def shard_group(entry: FileEntry) -> str:
    """Name the group of shards a tabular file belongs to: its directory and format ('train/*.parquet')."""
    directory = entry.path.rsplit("/", 1)[0] + "/" if "/" in entry.path else ""
    return f"{directory}*.{_EXTENSIONS[entry.format]}"


def check_entries(entries: list[FileEntry], source: str) -> dict[str, dict[str, str]]:
    """Fail on the first inconsistency, naming the file; return the schema of each shard group."""
    if not entries:
        raise DatasetError(f"dataset source {source} holds no files (an empty dataset cannot be staged)")
    if sum(e.size for e in entries) == 0:
        raise DatasetError(f"dataset source {source} holds only empty files")
    groups: dict[str, list[FileEntry]] = defaultdict(list)
    for entry in entries:
        if entry.format in TABULAR and entry.columns is not None:
            groups[shard_group(entry)].append(entry)
    schemas = {}
    for group, members in sorted(groups.items()):
        first = members[0]
        for other in members[1:]:
            problem = schema_difference(first, other)
            if problem:
                raise DatasetError(f"{other.path}: schema differs from {first.path}: {problem} "
                                   f"(every shard in {group} must have the same columns)")
        schemas[group] = dict(first.columns or {})
    tabular = [e for e in entries if e.format in TABULAR]
    if tabular and len(tabular) == len(entries) and all(e.rows == 0 for e in tabular):
        raise DatasetError(f"dataset source {source} has no rows: every file ({len(tabular)}) is empty")
    return schemas


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
