"""A staging's work list and upload ordering: the order files go up in, what is reused, and what is logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import closing
from pathlib import Path

import pytest

from shipyard import datasets
from shipyard.datasets.manifest import FileEntry
from shipyard.datasets.source import SourceFile
from shipyard.datasets.transfer import in_order
from shipyard.datasets.worklist import WorkList
from shipyard.errors import DatasetError
from shipyard.settings import Settings
from shipyard.storage import filesystem

LOCAL = SourceFile("/data/a b/x.csv", "a b/x.csv", 12, (2049, 77, 12, 1_700_000_000_123_456_789, 1_700_000_001_0))
# not local (no stat), under a source directory whose name holds a carriage return, and a non-ASCII name
REMOTE = SourceFile("s3://bucket/odd\rdir/\u00e9t\u00e9.bin", "\u00e9t\u00e9.bin", 5)
AGAIN = SourceFile("/data/z/COPY.TAX", "z/COPY.TAX", 12, (2049, 78, 12, 3, 4))  # same bytes as LOCAL


def _entry(file: SourceFile, sha256: str) -> FileEntry:
    return FileEntry(path=file.rel, size=file.size, sha256=sha256, format="csv", rows=3, columns={"x": "int64"})


def test_files_come_back_in_the_order_added_with_their_paths_sizes_stats_and_hashes(tmp_path: Path) -> None:
    with closing(WorkList(tmp_path)) as work:
        work.add(LOCAL, "a" * 64)
        work.add(REMOTE, "b" * 64)
        assert list(work.files()) == [(LOCAL, "a" * 64), (REMOTE, "b" * 64)]  # readable without a flush
        work.add(AGAIN, "a" * 64)
        assert list(work.files()) == [(LOCAL, "a" * 64), (REMOTE, "b" * 64), (AGAIN, "a" * 64)]


@pytest.mark.parametrize("path", ["/data/tab\there.csv", "/data/line\nbreak.csv"])
def test_a_source_path_with_a_tab_or_line_break_is_refused_by_name(tmp_path: Path, path: str) -> None:
    with closing(WorkList(tmp_path)) as work, pytest.raises(DatasetError) as raised:
        work.add(SourceFile(path, "x.csv", 1), "c" * 64)
    assert str(raised.value) == f"{path!r}: tabs and line breaks in a source path are not supported"


def test_known_returns_the_earlier_versions_entry_for_those_bytes_only(tmp_path: Path) -> None:
    earlier = _entry(LOCAL, "a" * 64)
    with closing(WorkList(tmp_path)) as work:
        work.remember([earlier, _entry(REMOTE, "b" * 64), earlier])  # a repeated entry is harmless
        assert work.known("a" * 64) == earlier
        assert work.known("b" * 64) == _entry(REMOTE, "b" * 64)
        assert work.known("d" * 64) is None


def test_the_plan_uploads_each_new_content_once_in_path_order_and_skips_what_an_earlier_version_holds(
        tmp_path: Path) -> None:
    other = SourceFile("/data/w.csv ", "w.csv ", 7, (1, 2, 7, 3, 4))  # a trailing space is part of the name
    with closing(WorkList(tmp_path)) as work:
        for file, sha in [(LOCAL, "e" * 64), (REMOTE, "b" * 64), (AGAIN, "e" * 64), (other, "f" * 64)]:
            work.add(file, sha)
        work.remember([_entry(REMOTE, "b" * 64)])
        assert work.plan() == LOCAL.size + other.size
        assert list(work.missing()) == [(LOCAL, "e" * 64), (other, "f" * 64)]


def test_nothing_to_upload_plans_zero_bytes(tmp_path: Path) -> None:
    with closing(WorkList(tmp_path)) as work:
        work.add(REMOTE, "b" * 64)
        work.remember([_entry(REMOTE, "b" * 64)])
        assert work.plan() == 0 and list(work.missing()) == []


def _done(value: str) -> Future[str]:
    future: Future[str] = Future()
    future.set_result(value)
    return future


def test_in_order_yields_results_in_the_order_given_and_keeps_at_most_the_window_outstanding() -> None:
    late: Future[str] = Future()
    pulled: list[int] = []
    ticks: list[int] = []

    def items() -> Iterator[tuple[int, Future[str] | str]]:
        values: list[Future[str] | str] = ["ready", late, _done("one"), "two", _done("three"), _done("four")]
        for key, value in enumerate(values):
            pulled.append(key)
            yield key, value

    def tick() -> None:  # the late result arrives while the consumer waits on it
        ticks.append(len(pulled))
        late.set_result("late")

    out = in_order(items(), 2, tick)
    assert next(out) == (0, "ready") and pulled == [0]  # a ready result with nothing before it goes straight out
    assert next(out) == (1, "late") and pulled == [0, 1, 2, 3]  # waited on with two behind it, not more
    assert ticks == [4]
    assert list(out) == [(2, "one"), (3, "two"), (4, "three"), (5, "four")]
    assert ticks == [4]  # results already done need no waiting


def test_in_order_with_a_window_of_one_holds_a_single_result_behind_the_one_waited_on() -> None:
    pulled: list[int] = []

    def items() -> Iterator[tuple[int, Future[str] | str]]:
        for key in range(3):
            pulled.append(key)
            yield key, _done(str(key))

    out = in_order(items(), 1, lambda: None)
    assert next(out) == (0, "0") and pulled == [0, 1]
    assert list(out) == [(1, "1"), (2, "2")]


def test_in_order_passes_a_failed_result_on() -> None:
    failed: Future[str] = Future()
    failed.set_exception(OSError("disk gone"))
    items: list[tuple[int, Future[str] | str]] = [(0, failed)]
    with pytest.raises(OSError, match="disk gone"):
        list(in_order(items, 4, lambda: None))


def test_publishing_logs_the_dataset_version_and_what_moved(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = filesystem(Settings(store_uri=str(tmp_path / "store")))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "src" / "b.csv").write_text("x,y\n3,4\n5,6\n")
    won: list[datasets.StageResult] = []

    def race(event: datasets.StageProgress) -> None:  # another staging of the same source publishes first
        if event.phase == "upload" and not won:
            won.append(datasets.stage(store, "tiny", str(tmp_path / "src")))

    with caplog.at_level(logging.INFO, logger="shipyard.datasets.stage"):
        lost = datasets.stage(store, "tiny", str(tmp_path / "src"), progress=race)

    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "shipyard.datasets.stage"]
    assert lines == [(logging.INFO, f"dataset tiny version {lost.version}: staged (2 objects uploaded, 20 bytes)"),
                     (logging.INFO, f"dataset tiny version {lost.version}: already staged (0 objects uploaded, "
                                    "0 bytes)")]
