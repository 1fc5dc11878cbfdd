"""The hash cache a staging consults: right hashes after edits, trusted only when safe, shared and closed cleanly."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pytest

from shipyard import datasets
from shipyard.datasets.hashing import BATCH, CHUNK, RACY_NS, HashCache, hash_file
from shipyard.datasets.source import Source, SourceFile, list_source
from shipyard.errors import DatasetError
from shipyard.settings import Settings
from shipyard.storage import filesystem


def _files(root: Path, names: list[str], size: int = 8) -> tuple[Source, list[SourceFile]]:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(name.encode().ljust(size, b"."))
    src = list_source(str(root))
    return src, list(src.files())


def _old(file: SourceFile) -> int:
    """A hashing time well past the racy window of the file's last change."""
    assert file.stat is not None
    return max(file.stat[3], file.stat[4]) + 2 * RACY_NS


def test_a_file_of_several_chunks_hashes_whole_reports_every_byte_and_comes_from_the_cache_next_time(
        tmp_path: Path) -> None:
    size = 2 * CHUNK + CHUNK // 2
    src, [file] = _files(tmp_path / "src", ["big.bin"], size)
    time.sleep(RACY_NS / 1e9 * 1.5)  # past the racy window: this hash may be cached
    cache, seen = HashCache(tmp_path / "hashes.sqlite"), list[int]()
    expected = hashlib.sha256((tmp_path / "src" / "big.bin").read_bytes()).hexdigest()

    assert hash_file(src, file, cache, seen.append) == (expected, False)
    assert seen == [CHUNK, CHUNK, CHUNK // 2]
    cache.close()

    again, seen = HashCache(tmp_path / "hashes.sqlite"), []
    assert hash_file(src, file, again, seen.append) == (expected, True) and seen == []
    again.close()


def test_unreadable_and_changed_files_fail_naming_the_file_and_the_reason(tmp_path: Path) -> None:
    src, [file] = _files(tmp_path / "src", ["labels.csv"], 16)
    gone = file._replace(path=str(tmp_path / "src" / "deleted.csv"))
    with pytest.raises(DatasetError) as missing:
        hash_file(src, gone)
    assert str(missing.value) == "labels.csv: cannot read (No such file or directory)"
    with pytest.raises(DatasetError) as changed:
        hash_file(src, file._replace(size=20))
    assert str(changed.value) == "labels.csv: changed while staging (20 bytes listed, 16 read); stage again"


def test_only_files_changed_well_before_they_were_hashed_are_remembered(tmp_path: Path) -> None:
    _, [settled, fresh, touched] = _files(tmp_path / "src", ["a", "b", "c"])
    assert settled.stat is not None and fresh.stat is not None and touched.stat is not None
    cache = HashCache(tmp_path / "hashes.sqlite")
    cache.put(settled, "1" * 64, _old(settled))
    cache.put(fresh, "2" * 64, max(fresh.stat[3], fresh.stat[4]) + RACY_NS // 2)  # hashed right after a write
    dev, ino, size, _, ctime = touched.stat
    future = touched._replace(stat=(dev, ino, size, ctime + 10 * RACY_NS, ctime))  # mtime set ahead (os.utime)
    cache.put(future, "3" * 64, ctime + 2 * RACY_NS)
    cache.close()

    again = HashCache(tmp_path / "hashes.sqlite")
    assert [again.get(f) for f in (settled, fresh, future)] == ["1" * 64, None, None]
    again.close()


def test_lookups_out_of_path_order_and_past_the_last_entry_still_answer(tmp_path: Path) -> None:
    _, files = _files(tmp_path / "src", ["a", "b", "c", "d"])
    cache = HashCache(tmp_path / "hashes.sqlite")
    for n, f in enumerate(files[:3]):
        cache.put(f, str(n) * 64, _old(f))
    cache.close()

    again = HashCache(tmp_path / "hashes.sqlite")
    a, b, c, d = files
    assert [again.get(f) for f in (b, a, c, d, b)] == ["1" * 64, "0" * 64, "2" * 64, None, "1" * 64]
    again.close()


def test_a_restaging_with_a_new_last_file_hashes_only_that_file(tmp_path: Path) -> None:
    store = filesystem(Settings(store_uri=str(tmp_path / "store")))
    source, cache = tmp_path / "src", tmp_path / "hashes.sqlite"
    _files(source, ["a.txt", "b.txt"])
    time.sleep(RACY_NS / 1e9 * 1.5)
    first = datasets.stage(store, "notes", str(source), hash_cache=cache)
    (source / "z.txt").write_text("new")

    again = datasets.stage(store, "notes", str(source), hash_cache=cache)

    assert (first.files_hashed, again.files_hashed) == (2, 1) and again.version != first.version


def test_hashes_of_a_remote_source_are_not_cached_and_the_cache_still_closes(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/bucket/data/x.csv", b"id\n1\n")
    file = SourceFile(path="/bucket/data/x.csv", rel="x.csv", size=5)
    cache = HashCache(tmp_path / "hashes.sqlite")
    assert hash_file(Source(uri="memory://bucket/data", fs=fs, listed=[file]), file, cache) == (
        hashlib.sha256(b"id\n1\n").hexdigest(), False)
    cache.close()


def test_entries_reach_the_file_in_batches_and_after_a_second_for_a_concurrent_staging(tmp_path: Path) -> None:
    _, [first, second] = _files(tmp_path / "src", ["a", "b"])
    writer = HashCache(tmp_path / "hashes.sqlite")
    writer.put(first, "1" * 64, _old(first))
    time.sleep(1.1)
    writer.put(second, "2" * 64, _old(second))
    assert HashCache(tmp_path / "hashes.sqlite").get(first) == "1" * 64

    many = HashCache(tmp_path / "many.sqlite")
    stat = (1, 1, 1, 1, 1)
    for n in range(BATCH):
        many.put(SourceFile(f"/x/{n:05d}", f"{n:05d}", 1, stat), "f" * 64, 2 * RACY_NS)
    probe = SourceFile(f"/x/{BATCH - 1:05d}", "", 1, stat)
    assert HashCache(tmp_path / "many.sqlite").get(probe) == "f" * 64  # the batch's last entry included
    for cache in (writer, many):
        cache.close()


def test_a_closed_cache_is_one_self_contained_file_and_can_be_used_again(tmp_path: Path) -> None:
    _, [only, read] = _files(tmp_path / "src", ["a", "b"])
    path = tmp_path / "hashes.sqlite"
    cache = HashCache(path)
    cache.put(only, "1" * 64, _old(only))  # written before any lookup
    cache.close()
    cache.get(read)  # a lookup that finds nothing: nothing pending, the files open
    cache.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["hashes.sqlite"]  # no -wal/-shm left
    shutil.copy(path, tmp_path / "copy.sqlite")
    with sqlite3.connect(tmp_path / "copy.sqlite") as copy:
        assert copy.execute("SELECT sha256 FROM hashes").fetchall() == [("1" * 64,)]
    copy.close()

    assert cache.get(only) == "1" * 64
    cache.put(read, "2" * 64, _old(read))
    cache.close()
    assert HashCache(path).get(read) == "2" * 64


def test_a_cache_used_from_a_worker_thread_closes_from_the_callers(tmp_path: Path) -> None:
    src, files = _files(tmp_path / "src", [f"f{n}" for n in range(4)])
    time.sleep(RACY_NS / 1e9 * 1.5)
    warm = HashCache(tmp_path / "hashes.sqlite")
    for f in files:
        hash_file(src, f, warm)
    warm.close()

    cache = HashCache(tmp_path / "hashes.sqlite")
    with ThreadPoolExecutor(1) as pool:  # as a staging hashes: in its pool
        results = list(pool.map(lambda f: hash_file(src, f, cache), files))
    cache.close()
    assert results == [(hashlib.sha256(Path(f.path).read_bytes()).hexdigest(), True) for f in files]
    assert not os.path.exists(f"{tmp_path / 'hashes.sqlite'}-wal")
