"""Staging against a real S3 API (moto and SeaweedFS): immutability, increments, faults, kills, bad sources."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError

from shipyard import datasets
from shipyard.datasets.manifest import manifest_key
from shipyard.errors import DatasetError, StoreError
from shipyard.settings import load_settings
from shipyard.storage import AlreadyExists, Store, filesystem
from tests.faultproxy import FaultProxy, Rule
from tests.stack import S3

MiB = 2**20
# Small parts so a 12 MiB file is a three-part multipart upload (5 MiB is the S3 minimum part size).
OPTIONS = datasets.StageOptions(jobs=4, part_size=5 * MiB, multipart_threshold=6 * MiB)


def make_source(root: Path, shards: int = 3, rows: int = 50, big: bool = False) -> Path:
    """Write Parquet shards (and optionally a multipart-sized binary) into ``root``."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        frame = pd.DataFrame({"x": np.arange(rows, dtype="float32") + i, "label": np.arange(rows) % 3})
        frame.to_parquet(root / "train" / f"part-{i:05d}.parquet", index=False)
    (root / "README.txt").write_text("digits, three classes\n")
    if big:
        (root / "blob.bin").write_bytes(np.random.default_rng(0).bytes(12 * MiB + 123))
    return root


def store() -> Store:
    return filesystem(load_settings())


def same_files(pulled: Path, source: Path) -> bool:
    """Tell whether two directory trees hold the same names and bytes."""
    left = {p.relative_to(pulled): p.read_bytes() for p in pulled.rglob("*") if p.is_file()}
    right = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    return left == right


def manifests(s3: S3) -> list[str]:
    return [k for k in s3.keys("store/datasets/") if k.endswith(".json")]


def test_staged_version_pulls_back_byte_identical_with_multipart(s3: S3, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", big=True)
    result = datasets.stage(store(), "digits", str(source), options=OPTIONS)

    assert result.created and result.files_uploaded == 5
    assert manifests(s3) == [f"store/datasets/digits/versions/{result.version}.json"]
    assert len([k for k in s3.keys("store/objects/")]) == 5
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert result.manifest.total_rows == 150
    assert result.manifest.schemas == {"train/*.parquet": {"x": "float", "label": "int64"}}
    pulled = datasets.pull(store(), "digits", result.version, tmp_path / "cache")
    assert same_files(pulled, source)


def test_versions_are_immutable_and_restaging_moves_no_bytes(s3: S3, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    first = datasets.stage(store(), "digits", str(source), options=OPTIONS)
    key = f"store/{'/'.join(manifest_key('digits', first.version))}"
    before = s3.client.head_object(Bucket=s3.bucket, Key=key)

    again = datasets.stage(store(), "digits", str(source), options=OPTIONS)

    assert (again.version, again.created, again.bytes_uploaded) == (first.version, False, 0)
    after = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
    with pytest.raises(AlreadyExists):
        store().write_bytes(b"{}", *manifest_key("digits", first.version), create_only=True)
    assert datasets.load_manifest(store(), "digits", first.version) == first.manifest


def test_same_size_edit_is_a_new_version_that_uploads_only_that_file(s3: S3, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    cache = tmp_path / "hashes.sqlite"
    time.sleep(0.2)  # let the files age past the hash cache's racy window, so the cache is used
    first = datasets.stage(store(), "digits", str(source), options=OPTIONS, hash_cache=cache)
    readme = source / "README.txt"
    stat = readme.stat()
    readme.write_text("DIGITS, three classes\n")  # same size
    os.utime(readme, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime, as 'aws s3 sync' sees it

    second = datasets.stage(store(), "digits", str(source), options=OPTIONS, hash_cache=cache)

    assert second.version != first.version and second.created
    assert (second.files_uploaded, second.bytes_uploaded, second.files_hashed) == (1, stat.st_size, 1)
    change = datasets.diff(store(), first.manifest, second.manifest)
    assert [new.path for _, new in change.changed] == ["README.txt"] and not change.added and not change.removed
    old = datasets.pull(store(), "digits", first.version, tmp_path / "cache")
    assert (old / "README.txt").read_text() == "digits, three classes\n"


def _cli(args: list[str], endpoint: str) -> subprocess.Popen[str]:
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": endpoint}
    return subprocess.Popen([sys.executable, "-m", "shipyard.cli", "data", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class _MeetingProxy(FaultProxy):
    """A proxy that holds each object upload until the other staging's proxy has seen one too.

    Both stagings reach their uploads, then wait for each other: ``met`` is True only if each proxy saw an
    object PUT while the other staging was mid-upload, so the two were in flight at once (no clock involved).
    """

    def __init__(self, upstream: str, wait_s: float = 20.0) -> None:
        super().__init__(upstream)
        self.arrived = threading.Event()
        self.other: _MeetingProxy | None = None
        self.met: bool | None = None  # None: no object PUT seen yet
        self._wait_s = wait_s

    def take(self, method: str, path: str) -> Rule | None:
        if method == "PUT" and "/store/objects/" in path and self.other is not None:
            self.arrived.set()
            if self.met is None or self.met:  # after one timeout, stop holding requests
                met = self.other.arrived.wait(self._wait_s)
                self.met = met if self.met is None else self.met and met
        return super().take(method, path)


def test_two_concurrent_stagings_publish_one_intact_version(s3: S3, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", shards=6)
    with _MeetingProxy(s3.endpoint) as first, _MeetingProxy(s3.endpoint) as second:
        first.other, second.other = second, first
        procs = [_cli(["stage", "digits", str(source), "--jobs", "2", "--rehash"], proxy.url)
                 for proxy in (first, second)]
        outputs = [p.communicate(timeout=120) for p in procs]

    assert (first.met, second.met) == (True, True), "the two stagings never uploaded at the same time"
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = sorted(out.strip() for out, _ in outputs)
    versions = {line.split()[0] for line in lines}
    assert len(versions) == 1
    assert sorted(line.split()[1] for line in lines) == ["already", "staged:"]
    assert len(manifests(s3)) == 1
    version = versions.pop().split("@")[1]
    assert same_files(datasets.pull(store(), "digits", version, tmp_path / "cache"), source)


def test_killed_staging_leaves_no_manifest_and_a_rerun_completes(s3: S3, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", shards=10)
    with FaultProxy(s3.endpoint) as proxy:
        proxy.inject("delay", "PUT", "/store/objects/", times=100, delay=0.3)
        proc = _cli(["stage", "digits", str(source), "--jobs", "2", "--rehash"], proxy.url)
        deadline = time.monotonic() + 60
        while len(proxy.seen("200", "PUT", "/store/objects/")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert manifests(s3) == []
    assert 3 <= len(s3.keys("store/objects/")) < 11

    rerun = datasets.stage(store(), "digits", str(source), options=OPTIONS)

    assert rerun.created and rerun.files_uploaded < 11
    assert manifests(s3) == [f"store/datasets/digits/versions/{rerun.version}.json"]
    assert same_files(datasets.pull(store(), "digits", rerun.version, tmp_path / "cache"), source)


def test_injected_s3_errors_are_retried_and_staged_bytes_are_identical(s3: S3, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_source(tmp_path / "src", big=True)
    with FaultProxy(s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        proxy.inject("500", "PUT", "/store/objects/", times=2)
        proxy.inject("503-slowdown", "PUT", "/store/objects/", times=2)
        proxy.inject("reset", "PUT", "partNumber=2")
        proxy.inject("reset", "PUT", "/store/objects/")  # a create-only PUT obstore will not resend: staging does
        proxy.inject("503-slowdown", "HEAD", "/store/objects/")
        proxy.inject("reset", "PUT", "/store/datasets/")
        proxy.inject("500", "PUT", "/store/datasets/")
        result = datasets.stage(store(), "digits", str(source), options=OPTIONS)
        faults = [e for e in proxy.events if e.outcome in {"500", "503-slowdown", "reset"}]
        events = list(proxy.events)

    assert all(rule.times == 0 for rule in proxy.rules)  # every fault was injected
    assert len(faults) == 9
    for fault in faults:  # ... and that very request was sent again (by botocore or s3fs) and answered
        later = events[events.index(fault) + 1 :]
        assert any(e.method == fault.method and e.path == fault.path and e.outcome.isdigit() for e in later), fault
    assert any(e.attempt > 1 for e in events)  # botocore's standard retry mode (exponential backoff) took part
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    assert result.created
    assert same_files(datasets.pull(store(), "digits", result.version, tmp_path / "cache"), source)


def test_corrupted_upload_is_sent_again_and_persistent_corruption_publishes_nothing(
        s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_source(tmp_path / "src", big=True)
    with FaultProxy(s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        proxy.inject("corrupt", "PUT", "/store/objects/", times=1000)
        culprit = r"(README\.txt|part-0000\d\.parquet|blob\.bin)"
        with pytest.raises(StoreError, match=culprit + ": the store kept different bytes"):
            datasets.stage(store(), "digits", str(source), options=OPTIONS)
        assert manifests(s3) == []
        proxy.clear()
        proxy.inject("corrupt", "PUT", "/store/objects/", times=2)
        result = datasets.stage(store(), "digits", str(source), options=OPTIONS)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    assert same_files(datasets.pull(store(), "digits", result.version, tmp_path / "cache"), source)


def _missing(s3: S3, tmp: Path) -> tuple[str, str]:
    return str(tmp / "nowhere"), "nowhere does not exist"


def _empty(s3: S3, tmp: Path) -> tuple[str, str]:
    (tmp / "empty" / ".hidden").mkdir(parents=True)
    return str(tmp / "empty"), "holds no files"


def _bad_parquet(s3: S3, tmp: Path) -> tuple[str, str]:
    source = make_source(tmp / "src")
    (source / "train" / "part-00001.parquet").write_bytes(b"PAR1 not really parquet")
    return str(source), r"train/part-00001\.parquet: unreadable Parquet"


def _mismatched_schema(s3: S3, tmp: Path) -> tuple[str, str]:
    source = make_source(tmp / "src")
    frame = pd.DataFrame({"x": np.array([1.0], dtype="float32"), "label": ["cat"]})
    frame.to_parquet(source / "train" / "part-00002.parquet", index=False)
    return str(source), (r"train/part-00002\.parquet: schema differs from train/part-00000\.parquet: "
                         r"column 'label' is (large_)?string, expected int64")


def _escaping_names(s3: S3, tmp: Path) -> tuple[str, str]:
    s3.client.put_object(Bucket=s3.bucket, Key="raw/digits/ok.csv", Body=b"a,b\n1,2\n")
    try:
        s3.client.put_object(Bucket=s3.bucket, Key="raw/digits/../../evil.csv", Body=b"a,b\n1,2\n")
    except ClientError:
        pytest.skip(f"{s3.backend} refuses '..' in object keys, so such a source cannot exist there")
    return f"s3://{s3.bucket}/raw/digits", r"raw/digits/\.\./\.\./evil\.csv' would escape the dataset prefix"


@pytest.mark.parametrize("case", [_missing, _empty, _bad_parquet, _mismatched_schema, _escaping_names],
                         ids=["missing-path", "empty-folder", "unreadable-parquet", "mismatched-schema",
                              "dotdot-names"])
def test_bad_sources_fail_naming_the_file_and_publish_nothing(s3: S3, tmp_path: Path, case: object) -> None:
    source, message = case(s3, tmp_path)  # type: ignore[operator]

    with pytest.raises(DatasetError, match=message):
        datasets.stage(store(), "digits", source, options=OPTIONS)

    assert s3.keys("store/") == []


def test_gc_aborts_a_killed_stagings_multipart_upload_and_deletes_its_unreferenced_objects(
        s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shipyard.cli import main

    source = make_source(tmp_path / "src")
    kept = datasets.stage(store(), "digits", str(source), options=OPTIONS)
    orphan = "store/objects/ab/" + "ab" * 32  # as a staging killed before its manifest leaves it
    s3.client.put_object(Bucket=s3.bucket, Key=orphan, Body=b"half a dataset")
    upload = s3.client.create_multipart_upload(Bucket=s3.bucket, Key="store/objects/cd/" + "cd" * 32)["UploadId"]
    s3.client.upload_part(Bucket=s3.bucket, Key="store/objects/cd/" + "cd" * 32, UploadId=upload, PartNumber=1,
                          Body=b"x" * 100)
    before = set(s3.keys("store/"))

    assert main(["data", "gc", "--older-than", "0s"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in listed[:-1]) == ["object", "upload"]
    assert set(s3.keys("store/")) == before

    assert main(["data", "gc", "--older-than", "0s", "--abort"]) == 0
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert set(s3.keys("store/")) == before - {orphan}
    assert same_files(datasets.pull(store(), "digits", kept.version, tmp_path / "cache"), source)
