"""Move content-addressed objects into the store in parallel, with bounded memory.

Small files go up in one request each; large ones as multipart uploads whose parts run in parallel
with everything else. Whatever the file sizes, the bytes held in memory at once stay under
``StageOptions.memory_budget``: every reader takes its share of the budget before it reads.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from shipyard.datasets.manifest import object_key
from shipyard.datasets.source import Source, SourceFile
from shipyard.errors import DatasetError
from shipyard.storage import Store

MiB = 2**20
T = TypeVar("T")


@dataclass(frozen=True)
class StageOptions:
    """How staging moves bytes: parallelism, part sizes and the memory it may hold."""

    jobs: int = 16
    part_size: int = 8 * MiB
    multipart_threshold: int = 16 * MiB
    memory_budget: int = 128 * MiB
    verify_attempts: int = 3

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.part_size < 5 * MiB or self.multipart_threshold < self.part_size:
            raise DatasetError("staging options: need jobs >= 1, part_size >= 5 MiB (the S3 minimum) and "
                               "multipart_threshold >= part_size")


@dataclass(frozen=True)
class Blob:
    """One object to store: its hash and a file holding its bytes."""

    sha256: str
    file: SourceFile


class ByteBudget:
    """A counting semaphore over bytes: readers wait until their buffer fits in the budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget (at most all of it) while the block runs."""
        need = min(nbytes, self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= need)
            self._free -= need
        try:
            yield
        finally:
            with self._cond:
                self._free += need
                self._cond.notify_all()


def check_unchanged(file: SourceFile) -> None:
    """Fail if a local file's stat changed since it was listed (and hashed)."""
    if file.stat is None:
        return
    st = os.stat(file.path)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != file.stat:
        raise DatasetError(f"{file.rel}: changed while staging; stage again")


class LocalObjects:
    """Write content-addressed objects into a local-directory store, streaming and verified."""

    def __init__(self, store: Store, source: Source, options: StageOptions, budget: ByteBudget,
                 on_bytes: Callable[[int], None]) -> None:
        self.store, self.source, self.budget, self.on_bytes = store, source, budget, on_bytes

    def exists(self, blob: Blob) -> bool:
        """Tell whether the object is already stored with the right size."""
        path = self.store.path(*object_key(blob.sha256))
        return os.path.exists(path) and os.path.getsize(path) == blob.file.size

    def put(self, blob: Blob) -> int:
        """Copy the file in chunks, checking its hash, then link it in place create-only."""
        if self.exists(blob):
            return 0
        path = self.store.path(*object_key(blob.sha256))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        try:
            with self.budget.hold(MiB), self.source.open(blob.file) as src, open(tmp, "wb") as dst:
                while chunk := src.read(MiB):
                    digest.update(chunk)
                    dst.write(chunk)
                    self.on_bytes(len(chunk))
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != blob.sha256:
                raise DatasetError(f"{blob.file.rel}: changed while staging; stage again")
            try:
                os.link(tmp, path)
            except FileExistsError:
                return 0
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return blob.file.size


def upload(store: Store, source: Source, blobs: list[Blob], options: StageOptions,
           on_bytes: Callable[[int], None], tick: Callable[[], None]) -> tuple[int, int]:
    """Store every blob not already there; return (objects created, bytes stored).

    ``on_bytes`` is called from worker threads; ``tick`` from the calling thread while it waits.
    """
    budget = ByteBudget(options.memory_budget)
    if store.is_local:
        local = LocalObjects(store, source, options, budget, on_bytes)
        with ThreadPoolExecutor(options.jobs, thread_name_prefix="stage") as pool:
            sizes = gather(pool, [pool.submit(local.put, b) for b in blobs], tick)
    else:
        from shipyard.datasets.s3objects import S3Objects

        s3 = S3Objects(store, source, options, budget, on_bytes)
        large_jobs = max(1, min(4, options.jobs // 4))
        with ThreadPoolExecutor(options.jobs, thread_name_prefix="stage") as pool, \
                ThreadPoolExecutor(large_jobs, thread_name_prefix="stage-multipart") as large:
            futures = [large.submit(s3.put_large, b, pool) if b.file.size >= options.multipart_threshold
                       else pool.submit(s3.put, b) for b in blobs]
            sizes = gather(pool, futures, tick, large)
    return sum(1 for s in sizes if s > 0), sum(sizes)


def gather(pool: ThreadPoolExecutor, futures: list[Future[T]], tick: Callable[[], None],
           *others: ThreadPoolExecutor) -> list[T]:
    """Wait for ``futures`` in order, calling ``tick`` while waiting; on the first failure cancel the rest."""
    pending = set(futures)
    try:
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            tick()
            for future in done:
                future.result()  # re-raise the first failure in the caller's thread
    except BaseException:
        # Cancel queued parts first, so multipart uploads waiting on them fail fast and abort.
        pool.shutdown(wait=False, cancel_futures=True)
        for executor in (*others, pool):
            executor.shutdown(wait=True, cancel_futures=True)
        raise
    return [f.result() for f in futures]
