"""Move content-addressed objects into the store in parallel, with bounded memory.

Small files go up in one request each; large ones as multipart uploads whose parts run in parallel
with everything else. Whatever the file sizes, file data in memory stays under
``StageOptions.memory_budget``: every read of more than ``SMALL`` bytes goes into one of a fixed set of
reused buffers. Reusing them matters as much as counting them: freshly allocated multi-megabyte buffers,
freed by 16 threads, stay resident in the allocator's per-thread arenas.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from shipyard.datasets.manifest import object_key
from shipyard.datasets.source import Source, SourceFile
from shipyard.errors import DatasetError
from shipyard.storage import Store

MiB = 2**20
SMALL = 256 * 1024  # reads up to this size allocate: pooling them would throttle many-small-file datasets
K = TypeVar("K")
R = TypeVar("R")


@dataclass(frozen=True)
class StageOptions:
    """How staging moves bytes: parallelism, part sizes and the memory it may hold."""

    jobs: int = 16
    part_size: int = 8 * MiB
    multipart_threshold: int = 8 * MiB
    memory_budget: int = 64 * MiB
    verify_attempts: int = 3

    @property
    def buffer_size(self) -> int:
        """Return the size of each reusable read buffer: a part, or a whole single-request file."""
        return max(self.part_size, self.multipart_threshold)

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.part_size < 5 * MiB or self.multipart_threshold < self.part_size:
            raise DatasetError("staging options: need jobs >= 1, part_size >= 5 MiB (the S3 minimum) and "
                               "multipart_threshold >= part_size")


@dataclass(frozen=True)
class Blob:
    """One object to store: its hash and a file holding its bytes."""

    sha256: str
    file: SourceFile


class BufferPool:
    """A fixed set of reusable buffers; a reader waits until one is free."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = max(1, count), size
        self._free: queue.LifoQueue[bytearray] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()

    @contextmanager
    def view(self, length: int) -> Iterator[memoryview]:
        """Lend a buffer as a writable view of exactly ``length`` bytes (small reads get their own)."""
        if length <= SMALL or length > self.size:  # tiny, or a part of a >80 GB file: allocate
            yield memoryview(bytearray(length))
            return
        buffer = self._take()
        try:
            with memoryview(buffer) as whole:
                yield whole[:length]
        finally:
            self._free.put(buffer)

    def _take(self) -> bytearray:
        with self._lock:
            if self._made < self.count and self._free.empty():
                self._made += 1
                return bytearray(self.size)
        return self._free.get()


def check_unchanged(file: SourceFile) -> None:
    """Fail if a local file's stat changed since it was listed (and hashed)."""
    if file.stat is None:
        return
    st = os.stat(file.path)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != file.stat:
        raise DatasetError(f"{file.rel}: changed while staging; stage again")


class LocalObjects:
    """Write content-addressed objects into a local-directory store, streaming and verified."""

    def __init__(self, store: Store, source: Source, options: StageOptions, buffers: BufferPool,
                 on_bytes: Callable[[int], None]) -> None:
        self.store, self.source, self.buffers, self.on_bytes = store, source, buffers, on_bytes

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
            with self.buffers.view(MiB) as view, self.source.open(blob.file) as src, open(tmp, "wb") as dst:
                while n := src.readinto(view):
                    digest.update(view[:n])
                    dst.write(view[:n])
                    self.on_bytes(n)
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


def upload(store: Store, source: Source, blobs: Iterable[Blob], options: StageOptions,
           on_bytes: Callable[[int], None], tick: Callable[[], None]) -> tuple[int, int]:
    """Store every blob not already there; return (objects created, bytes stored).

    At most a few uploads per job are queued at once, whatever the number of blobs. ``on_bytes`` is
    called from worker threads; ``tick`` from the calling thread while it waits.
    """
    buffers = BufferPool(options.memory_budget // options.buffer_size, options.buffer_size)
    created = [0, 0]  # objects created, bytes stored
    with ThreadPoolExecutor(options.jobs, thread_name_prefix="stage") as pool, \
            ThreadPoolExecutor(max(1, min(4, options.jobs // 4)), thread_name_prefix="stage-multipart") as large, \
            cancel_on_failure(pool, large):
        if store.is_local:
            local = LocalObjects(store, source, options, buffers, on_bytes)
            submit: Callable[[Blob], Future[int]] = lambda b: pool.submit(local.put, b)  # noqa: E731
        else:
            from shipyard.datasets.s3objects import S3Objects

            s3 = S3Objects(store, source, options, buffers, on_bytes)
            submit = lambda b: (large.submit(s3.put_large, b, pool)  # noqa: E731
                                if b.file.size >= options.multipart_threshold else pool.submit(s3.put, b))
        pending: set[Future[int]] = set()
        for blob in blobs:
            pending.add(submit(blob))
            while len(pending) >= 4 * options.jobs:
                pending = _settle(pending, tick, created)
        while pending:
            pending = _settle(pending, tick, created)
    return created[0], created[1]


def _settle(pending: set[Future[int]], tick: Callable[[], None], created: list[int]) -> set[Future[int]]:
    """Wait until some uploads finish; count what they stored, re-raising the first failure here."""
    done, rest = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
    tick()
    for future in done:
        size = future.result()
        created[0] += size > 0
        created[1] += size
    return rest


def in_order(items: Iterable[tuple[K, Future[R] | R]], window: int, tick: Callable[[], None]) -> Iterator[tuple[K, R]]:
    """Yield ``(key, result)`` in the order given, with at most ``window`` results outstanding."""
    pending: deque[tuple[K, Future[R] | R]] = deque()
    for item in items:
        if not pending and not isinstance(item[1], Future):
            yield item  # type: ignore[misc]  # a ready result with nothing before it: no queueing
            continue
        pending.append(item)
        while len(pending) > window:
            yield _resolve(pending.popleft(), tick)
    while pending:
        yield _resolve(pending.popleft(), tick)


def _resolve(item: tuple[K, Future[R] | R], tick: Callable[[], None]) -> tuple[K, R]:
    key, value = item
    if not isinstance(value, Future):
        return key, value
    while not value.done():
        wait([value], timeout=0.2)
        tick()
    return key, value.result()


@contextmanager
def cancel_on_failure(pool: ThreadPoolExecutor, *others: ThreadPoolExecutor) -> Iterator[None]:
    """On a failure, drop queued work (parts first, so multipart uploads waiting on them fail and abort)."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for executor in (*others, pool):
            executor.shutdown(wait=True, cancel_futures=True)
        raise
