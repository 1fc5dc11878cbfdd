"""Manifest shards: entries as JSON lines, written to local files while staging, stored content-addressed.

A shard's key is the SHA-256 of its bytes, so a reader checks what it got, and identical shards (the
same files in two versions) are stored once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from shipyard.datasets.manifest import SHARD_FILES, FileEntry, shard_key
from shipyard.errors import DatasetError
from shipyard.storage import AlreadyExists, Store


class ShardWriter:
    """Write entries (in path order) into local shard files of at most ``per_shard`` entries each."""

    def __init__(self, directory: Path, per_shard: int | None = None) -> None:
        self.directory, self.per_shard = directory, per_shard or SHARD_FILES
        self.done: list[tuple[str, Path]] = []  # (sha256, local file) of each finished shard
        self._fh: IO[bytes] | None = None
        self._digest = hashlib.sha256()
        self._count = 0

    def add(self, entry: FileEntry) -> None:
        """Append one entry, starting a new shard when the current one is full."""
        if self._fh is None:
            self._fh = open(self.directory / f"shard-{len(self.done):06d}.jsonl", "wb")
        line = entry.model_dump_json(exclude_none=True).encode() + b"\n"
        self._fh.write(line)
        self._digest.update(line)
        self._count += 1
        if self._count >= self.per_shard:
            self._close()

    def finish(self) -> list[tuple[str, Path]]:
        """Close the last shard and return every shard's (SHA-256, local file)."""
        self._close()
        return self.done

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self.done.append((self._digest.hexdigest(), Path(self._fh.name)))
            self._fh, self._digest, self._count = None, hashlib.sha256(), 0


def store_shards(store: Store, name: str, shards: list[tuple[str, Path]]) -> None:
    """Store each shard create-only (one already there holds the same bytes), one in memory at a time."""
    for sha256, path in shards:
        try:
            store.write_bytes(path.read_bytes(), *shard_key(name, sha256), create_only=True)
        except AlreadyExists:
            pass
        os.unlink(path)


def read_shard(store: Store, name: str, sha256: str) -> Iterator[FileEntry]:
    """Yield a stored shard's entries, after checking its bytes against its key."""
    data = store.read_bytes(*shard_key(name, sha256))
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DatasetError(f"manifest shard {store.url(*shard_key(name, sha256))} does not match its SHA-256 "
                           "(the store copy is damaged)")
    for line in data.splitlines():
        yield FileEntry.model_validate_json(line)
