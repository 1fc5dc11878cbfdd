"""Datasets: immutable, content-addressed versions in the store.

Store layout::

    objects/<sha[:2]>/<sha256>                 each file's bytes, stored once, shared by all datasets
    datasets/<name>/shards/<sha256>.jsonl      the manifest's file entries, JSON lines in path order
    datasets/<name>/versions/<version>.json    the manifest head (totals, schemas, shard keys), written
                                               last and create-only: it makes the version visible

A version id derives from the manifest's file list (relative path, size, SHA-256), so the same content
always gives the same id, and a manifest is never overwritten. See docs/datasets.md.
"""

from shipyard.datasets.diff import DatasetDiff, diff
from shipyard.datasets.manifest import FileEntry, Manifest
from shipyard.datasets.pull import pull
from shipyard.datasets.stage import StageProgress, StageResult, find_staged, stage
from shipyard.datasets.transfer import StageOptions
from shipyard.datasets.versions import (
    iter_files,
    list_datasets,
    list_versions,
    load_manifest,
    load_staged,
    resolve_version,
)

__all__ = [
    "DatasetDiff",
    "FileEntry",
    "Manifest",
    "StageOptions",
    "StageProgress",
    "StageResult",
    "diff",
    "find_staged",
    "iter_files",
    "list_datasets",
    "list_versions",
    "load_manifest",
    "load_staged",
    "pull",
    "resolve_version",
    "stage",
]
