"""Find and remove what no version needs: stale multipart uploads, unreferenced objects and shards.

A staging killed before it publishes leaves content-addressed objects and manifest shards that no
manifest head names (the next staging reuses them), and on S3 possibly an incomplete multipart upload
(staging aborts those on any failure it survives, but not on ``kill -9``). Anything older than a given age
and named by no version is garbage. The referenced set is gathered into a temporary SQLite file, so
memory stays flat however many files the versions hold.

Run it when no staging is running, with an age longer than any staging takes: a staging that found an
old unreferenced object already stored relies on it without uploading it again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shipyard.datasets.manifest import object_key, shard_key
from shipyard.datasets.versions import iter_files, list_datasets, list_versions
from shipyard.errors import StoreError
from shipyard.storage import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Garbage:
    """One thing no version needs: 'upload' (incomplete multipart), 'object', 'shard' or 'temp' (a partial file)."""

    kind: str
    url: str
    modified: datetime
    rel: str  # the key under the store's root
    size: int = 0
    upload_id: str = ""


class Collector:
    """Find garbage in one store, and remove it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.bucket, _, prefix = store.root.partition("/")
        self.base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The store's boto3 client (S3 stores only), built once."""
        if self._client is None:
            self._client = self.store.s3_client()
        return self._client

    def find(self, older_than: timedelta) -> Iterator[Garbage]:
        """Yield what is older than ``older_than`` and named by no published version."""
        with self._errors():
            yield from self._find(older_than)

    def remove(self, item: Garbage) -> None:
        """Abort an upload, or delete an object, shard or partial file."""
        with self._errors():
            self._remove(item)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"store {self.store.uri} failed during garbage collection: {reason}") from exc

    def _find(self, older_than: timedelta) -> Iterator[Garbage]:
        cutoff = datetime.now(UTC) - older_than
        with tempfile.TemporaryDirectory(prefix="shipyard-gc-") as tmp, \
                closing(sqlite3.connect(Path(tmp) / "referenced.sqlite", isolation_level=None)) as db:
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; "
                             "CREATE TABLE ref (key TEXT PRIMARY KEY);")
            for name in list_datasets(self.store):
                for manifest in list_versions(self.store, name):
                    db.execute("BEGIN")
                    db.executemany("INSERT OR IGNORE INTO ref VALUES (?)",
                                   [("/".join(shard_key(name, s)),) for s in manifest.shards])
                    db.executemany("INSERT OR IGNORE INTO ref VALUES (?)",
                                   (("/".join(object_key(e.sha256)),) for e in iter_files(self.store, manifest)))
                    db.execute("COMMIT")
            for item in self._local() if self.store.is_local else self._s3():
                if item.modified < cutoff and (item.kind in {"upload", "temp"} or db.execute(
                        "SELECT 1 FROM ref WHERE key = ?", (item.rel,)).fetchone() is None):
                    yield item

    def _remove(self, item: Garbage) -> None:
        if self.store.is_local:
            os.unlink(self.store.path(item.rel))
        elif item.kind == "upload":
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.base + item.rel, UploadId=item.upload_id)
        else:
            self.client.delete_object(Bucket=self.bucket, Key=self.base + item.rel)

    def _local(self) -> Iterator[Garbage]:
        for top, kind in (("objects", "object"), ("datasets", "shard")):
            for directory, _, names in os.walk(self.store.path(top)):
                for name in names:
                    if ".tmp-" not in name and kind == "shard" and not name.endswith(".jsonl"):
                        continue  # a manifest head
                    path = os.path.join(directory, name)
                    st = os.stat(path)
                    yield Garbage("temp" if ".tmp-" in name else kind, path, datetime.fromtimestamp(st.st_mtime, UTC),
                                  os.path.relpath(path, self.store.root), st.st_size)

    def _s3(self) -> Iterator[Garbage]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.base)
        for page in pages:
            for upload in page.get("Uploads", []):
                yield Garbage("upload", f"s3://{self.bucket}/{upload['Key']}", upload["Initiated"],
                              upload["Key"][len(self.base):], upload_id=upload["UploadId"])
        for top, kind in (("objects/", "object"), ("datasets/", "shard")):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.base + top)
            for page in pages:
                for obj in page.get("Contents", []):
                    if kind == "object" or obj["Key"].endswith(".jsonl"):
                        yield Garbage(kind, f"s3://{self.bucket}/{obj['Key']}", obj["LastModified"],
                                      obj["Key"][len(self.base):], int(obj["Size"]))
