"""The dataset manifest and how a version id is derived from it.

A manifest is JSON: one entry per file (relative path, size, SHA-256, format, and rows and columns for
tabular files), a schema summary per group of shards, the source and the creation time. The version id
hashes only the file list (path, size, SHA-256), so the same content always yields the same id.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from pydantic import BaseModel, Field, computed_field


class FileEntry(BaseModel):
    """One file of a dataset version."""

    path: str = Field(description="Path relative to the dataset root, '/'-separated.")
    size: int
    sha256: str
    format: str = Field(description="parquet, csv, npz, image or other.")
    rows: int | None = None
    columns: dict[str, str] | None = Field(default=None, description="Column name -> type, tabular files only.")


class Manifest(BaseModel):
    """Everything a later stage needs to know about a dataset version."""

    dataset: str
    version: str
    source: str
    created_at: datetime
    files: list[FileEntry]
    schemas: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Shard group ('train/*.parquet') -> the columns every file in the group shares.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_bytes(self) -> int:
        """Return the dataset's size in bytes."""
        return sum(f.size for f in self.files)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_rows(self) -> int | None:
        """Return the number of rows over all tabular files, if any are tabular."""
        rows = [f.rows for f in self.files if f.rows is not None]
        return sum(rows) if rows else None

    def to_json(self) -> bytes:
        """Serialise the manifest as it is stored."""
        return self.model_dump_json(indent=2).encode()


def version_id(files: list[FileEntry]) -> str:
    """Derive the version id from the file list: same content, same id."""
    canon = json.dumps(sorted((f.path, f.size, f.sha256) for f in files), separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def object_key(sha256: str) -> tuple[str, str, str]:
    """Return the store path parts of a content-addressed object."""
    return ("objects", sha256[:2], sha256)


def manifest_key(name: str, version: str) -> tuple[str, str, str, str]:
    """Return the store path parts of a version's manifest."""
    return ("datasets", name, "versions", f"{version}.json")
