"""The dataset manifest, stored as a stream, and how a version id is derived from it.

A manifest is a small JSON head plus JSON-lines shards. The head (``versions/<version>.json``, written
last and create-only, so it is what makes a version visible) holds the totals, the schema summary per
group of shards, the source, the creation time and the keys of its shards. Each shard holds up to
:data:`SHARD_FILES` file entries (relative path, size, SHA-256, format, and rows and columns for tabular
files), one JSON object a line, sorted by path across shards; so a manifest is written and read in
bounded memory whatever the number of files. Heads written before shards existed carry their entries
inline (``files``); both are read alike through :func:`shipyard.datasets.versions.iter_files`.

The version id hashes only the file list (path, size, SHA-256) in path order, so the same content always
yields the same id; it is computed incrementally (:class:`VersionHasher`) and equals the id the inline
format gave.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from json.encoder import encode_basestring_ascii as _json_string  # what json.dumps writes for a str
from typing import Any

from pydantic import BaseModel, Field, model_validator

SHARD_FILES = 50_000  # entries per manifest shard: ~12 MB of JSON lines


class FileEntry(BaseModel):
    """One file of a dataset version."""

    path: str = Field(description="Path relative to the dataset root, '/'-separated.")
    size: int
    sha256: str
    format: str = Field(description="parquet, csv, npz, image or other.")
    rows: int | None = None
    columns: dict[str, str] | None = Field(default=None, description="Column name -> type, tabular files only.")


class Manifest(BaseModel):
    """Everything a later stage needs to know about a dataset version (the head; entries are in shards)."""

    dataset: str
    version: str
    source: str
    created_at: datetime
    schemas: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Shard group ('train/*.parquet') -> the columns every file in the group shares.")
    file_count: int = 0
    total_bytes: int = 0
    total_rows: int | None = Field(default=None, description="Rows over all tabular files, if any are tabular.")
    shards: list[str] = Field(default_factory=list, description="Store keys of the entry shards, in path order.")
    files: list[FileEntry] = Field(default_factory=list,
                                   description="Entries held inline (manifests written before shards existed).")

    @model_validator(mode="before")
    @classmethod
    def _inline_totals(cls, data: Any) -> Any:
        """Give an inline (older) manifest the totals a sharded head stores."""
        if isinstance(data, dict) and data.get("files") and "file_count" not in data:
            files = data["files"]
            data = {**data, "file_count": len(files)}
            if "total_bytes" not in data:
                data["total_bytes"] = sum(int(f["size"]) if isinstance(f, dict) else f.size for f in files)
        return data

    def to_json(self) -> bytes:
        """Serialise the manifest head as it is stored."""
        return self.model_dump_json(indent=2, exclude={"files"} if self.shards else None).encode()


class VersionHasher:
    """Derive the version id from the file list, fed in path order: same content, same id."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256(b"[")
        self._first = True

    def add(self, path: str, size: int, sha256: str) -> None:
        """Add the next file (paths must come sorted)."""
        item = f'{"" if self._first else ","}[{_json_string(path)},{int(size)},{_json_string(sha256)}]'
        self._digest.update(item.encode())
        self._first = False

    def version(self) -> str:
        """Return the version id of everything added."""
        digest = self._digest.copy()
        digest.update(b"]")
        return digest.hexdigest()[:16]


def object_key(sha256: str) -> tuple[str, str, str]:
    """Return the store path parts of a content-addressed object."""
    return ("objects", sha256[:2], sha256)


def manifest_key(name: str, version: str) -> tuple[str, str, str, str]:
    """Return the store path parts of a version's manifest head."""
    return ("datasets", name, "versions", f"{version}.json")


def shard_key(name: str, sha256: str) -> tuple[str, str, str, str]:
    """Return the store path parts of a manifest shard (content-addressed: identical shards are shared)."""
    return ("datasets", name, "shards", f"{sha256}.jsonl")
