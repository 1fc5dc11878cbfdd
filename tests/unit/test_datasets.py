"""Dataset versions on a local-directory store: formats, validation, hash cache, pull, diff and the CLI."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shipyard import datasets
from shipyard.cli import main
from shipyard.datasets.manifest import manifest_key, object_key
from shipyard.datasets.source import check_name
from shipyard.datasets.transfer import BufferPool
from shipyard.errors import DatasetError
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem


def make_source(root: Path) -> Path:
    """Write one file of every supported format."""
    (root / "train").mkdir(parents=True)
    for i in range(2):
        pd.DataFrame({"x": np.arange(10, dtype="float32"), "y": np.arange(10) + i}).to_parquet(
            root / "train" / f"part-{i}.parquet", index=False)
    (root / "labels.csv").write_text("id,name\n0,zero\n1,one\n2,two\n")
    np.savez(root / "arrays.npz", images=np.zeros((7, 8, 8), dtype="uint8"), labels=np.arange(7))
    (root / "images" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4), "red").save(root / "images" / "cat" / "0.png")
    (root / ".DS_Store").write_bytes(b"hidden")
    return root


def test_manifest_records_formats_rows_and_schemas(store: Store, tmp_path: Path) -> None:
    result = datasets.stage(store, "mixed", str(make_source(tmp_path / "src")))

    by_path = {f.path: f for f in datasets.iter_files(store, result.manifest)}
    assert sorted(by_path) == ["arrays.npz", "images/cat/0.png", "labels.csv", "train/part-0.parquet",
                               "train/part-1.parquet"]
    assert {p: (f.format, f.rows) for p, f in by_path.items()} == {
        "arrays.npz": ("npz", 7), "images/cat/0.png": ("image", None), "labels.csv": ("csv", 3),
        "train/part-0.parquet": ("parquet", 10), "train/part-1.parquet": ("parquet", 10)}
    assert result.manifest.schemas["train/*.parquet"] == {"x": "float", "y": "int64"}
    assert result.manifest.schemas["*.npz"] == {"images": "uint8[8, 8]", "labels": "int64[]"}
    stored = json.loads(Path(store.path(*manifest_key("mixed", result.version))).read_text())
    assert stored["total_rows"] == 30 and stored["version"] == result.version


def test_same_content_gives_the_same_version_and_unchanged_files_move_no_bytes(store: Store, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    first = datasets.stage(store, "mixed", str(source))
    copy = tmp_path / "copy"
    os.rename(source, copy)

    again = datasets.stage(store, "mixed", str(copy))

    assert again.version == first.version and not again.created and again.bytes_uploaded == 0


def test_same_size_edit_with_restored_mtime_is_seen_through_the_hash_cache(store: Store, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    cache = tmp_path / "hashes.sqlite"
    time.sleep(0.2)  # past the racy window: these hashes may be cached
    first = datasets.stage(store, "mixed", str(source), hash_cache=cache)
    unchanged = datasets.stage(store, "mixed", str(source), hash_cache=cache)
    labels = source / "labels.csv"
    stat = labels.stat()
    labels.write_text("id,name\n0,zero\n1,one\n2,TWO\n")
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    edited = datasets.stage(store, "mixed", str(source), hash_cache=cache)

    assert (first.files_hashed, unchanged.files_hashed, edited.files_hashed) == (5, 0, 1)
    assert edited.version != first.version and edited.files_uploaded == 1


def test_a_file_changed_just_before_hashing_is_not_trusted_from_the_cache(store: Store, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    cache = tmp_path / "hashes.sqlite"
    soon = time.time_ns() + 60 * 10**9  # stamped as changed within the racy window of any hashing in the next minute
    for path in source.rglob("*"):
        os.utime(path, ns=(soon, soon))
    datasets.stage(store, "mixed", str(source), hash_cache=cache)

    again = datasets.stage(store, "mixed", str(source), hash_cache=cache)

    assert again.files_hashed == 5


def test_progress_reports_each_phase_to_completion(store: Store, tmp_path: Path) -> None:
    events: list[datasets.StageProgress] = []
    datasets.stage(store, "mixed", str(make_source(tmp_path / "src")), progress=events.append)

    phases = [e.phase for e in events]
    assert sorted(set(phases), key=phases.index) == ["hash", "inspect", "upload"]
    for phase in ("hash", "inspect", "upload"):
        last = [e for e in events if e.phase == phase][-1]
        assert last.done == last.total and last.fraction == 1.0


def test_a_restaging_uploads_and_reports_exactly_the_edited_bytes_even_under_a_name_with_spaces(
        store: Store, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    (source / "notes with spaces.txt").write_text("first draft\n")
    datasets.stage(store, "mixed", str(source))
    edited = "second draft, longer than the first\n"
    (source / "notes with spaces.txt").write_text(edited)
    events: list[datasets.StageProgress] = []

    result = datasets.stage(store, "mixed", str(source), progress=events.append)

    assert result.created and (result.files_uploaded, result.bytes_uploaded) == (1, len(edited))
    assert {e.total for e in events if e.phase == "upload"} == {len(edited)}
    pulled = datasets.pull(store, "mixed", result.version, tmp_path / "pulled")
    assert (pulled / "notes with spaces.txt").read_text() == edited


def test_a_staging_that_loses_the_race_returns_the_winners_version_and_leaves_its_manifest_alone(
        store: Store, tmp_path: Path) -> None:
    source = str(make_source(tmp_path / "src"))
    won: list[datasets.StageResult] = []

    def race(event: datasets.StageProgress) -> None:  # another staging of the same source finishes first
        if event.phase == "upload" and not won:
            won.append(datasets.stage(store, "mixed", source))

    lost = datasets.stage(store, "mixed", source, progress=race)

    assert won[0].created and not lost.created
    assert lost.version == won[0].version and lost.manifest == won[0].manifest  # the winner's, created_at included
    assert datasets.load_manifest(store, "mixed", lost.version).created_at == won[0].manifest.created_at


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


@pytest.mark.parametrize(("files", "message"), [
    ({}, "holds no files"),
    ({".hidden": "x"}, "holds no files"),
    ({"a.bin": ""}, "holds only empty files"),
    ({"a.csv": ""}, r"a\.csv: empty CSV"),
    ({"a.csv": "x,y\n", "b.csv": "x,y\n"}, "has no rows"),
    ({"t/a.parquet": b"PAR1garbage"}, r"t/a\.parquet: unreadable Parquet"),
    ({"a.csv": "x,y\n1,2\n", "b.csv": "x,z\n1,2\n"}, r"b\.csv: schema differs from a\.csv: column 'y' is missing"),
    ({"a.csv": "x,y\n1,2\n", "b.csv": "y,x\n1,2\n"}, r"b\.csv: schema differs .*different order"),
    ({"a.csv": "x,y\n1,2\n3\n"}, r"a\.csv: unreadable CSV"),
    ({"d.npz": b"PK not a zip"}, r"d\.npz: unreadable NPZ"),
    ({"img/1.png": b"\x89PNG broken"}, r"img/1\.png: unreadable image"),
])
def test_bad_sources_fail_naming_the_file_and_publish_nothing(store: Store, tmp_path: Path,
                                                              files: dict[str, str | bytes], message: str) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name, data in files.items():
        _write(source / name, data)

    with pytest.raises(DatasetError, match=message):
        datasets.stage(store, "bad", str(source))

    assert not os.path.exists(store.root) or not any(Path(store.root).rglob("*.json"))
    assert not os.path.exists(store.path("objects"))


def test_names_that_escape_the_prefix_are_refused(store: Store) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/escape/ok.csv", b"a\n1\n")
    fs.pipe("/escape/../evil.csv", b"a\n1\n")

    with pytest.raises(DatasetError, match=r"escape/\.\./evil\.csv' would escape the dataset prefix"):
        datasets.stage(store, "bad", "memory://escape")


@pytest.mark.parametrize("name", ["../x", "a/../b", "/abs", "a\\..\\b", "a//b", "./a", "", "a\nb"])
def test_check_name_refuses_paths_that_are_not_plain(name: str) -> None:
    with pytest.raises(DatasetError):
        check_name(name, name)


def test_pull_materialises_exactly_the_version_and_detects_a_damaged_object(store: Store, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    result = datasets.stage(store, "mixed", str(source))
    pulled = datasets.pull(store, "mixed", result.version, tmp_path / "cache")
    assert (pulled / "labels.csv").read_text() == (source / "labels.csv").read_text()

    entry = next(f for f in datasets.iter_files(store, result.manifest) if f.path == "labels.csv")
    Path(store.path(*object_key(entry.sha256))).write_text("id,name\n0,zero\n1,one\n2,tw0\n")
    with pytest.raises(DatasetError, match=r"labels\.csv: object .* does not match its SHA-256"):
        datasets.pull(store, "mixed", result.version, tmp_path / "other-cache")
    assert not (tmp_path / "other-cache" / "versions" / "mixed" / result.version).exists()


def test_pull_refuses_a_manifest_that_would_write_outside_the_target(store: Store, tmp_path: Path) -> None:
    result = datasets.stage(store, "mixed", str(make_source(tmp_path / "src")))
    first = next(datasets.iter_files(store, result.manifest))
    forged = result.manifest.model_copy(update={"version": "f00d", "shards": [], "files": [
        first.model_copy(update={"path": "../../outside"})]})
    store.write_bytes(forged.to_json(), *manifest_key("mixed", "f00d"))

    with pytest.raises(DatasetError, match="would escape"):
        datasets.pull(store, "mixed", "f00d", tmp_path / "cache")
    assert not (tmp_path / "outside").exists()


def test_diff_names_added_removed_changed_files_and_schema_changes(store: Store, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    old = datasets.stage(store, "mixed", str(source)).manifest
    (source / "arrays.npz").unlink()
    (source / "extra.txt").write_text("notes")
    for i in range(2):
        pd.DataFrame({"x": np.arange(11, dtype="float32"), "y": np.arange(11.0)}).to_parquet(
            source / "train" / f"part-{i}.parquet", index=False)
    new = datasets.stage(store, "mixed", str(source)).manifest

    change = datasets.diff(store, old, new)

    assert [e.path for e in change.added] == ["extra.txt"] and [e.path for e in change.removed] == ["arrays.npz"]
    assert [n.path for _, n in change.changed] == ["train/part-0.parquet", "train/part-1.parquet"]
    assert change.unchanged == 2
    assert "train/*.parquet: column 'y' int64 -> double" in change.schema_changes
    assert "*.npz: shard group removed" in change.schema_changes


def test_buffer_pool_lends_at_most_its_buffers_and_never_shares_one() -> None:
    pool = BufferPool(count=3, size=1 << 20)
    lent: list[int] = []
    peak = [0]
    clobbered: list[int] = []
    lock = threading.Lock()

    def reader(fill: int) -> None:
        with pool.view(1 << 19) as view:
            with lock:
                lent.append(fill)
                peak[0] = max(peak[0], len(lent))
            view[:] = bytes([fill]) * len(view)
            time.sleep(0.002)
            if bytes(view) != bytes([fill]) * len(view):  # somebody else wrote into this buffer
                clobbered.append(fill)
            with lock:
                lent.remove(fill)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 3 and not clobbered


def test_cli_stage_ls_show_diff_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHIPYARD_STORE_URI", str(tmp_path / "store"))
    source = make_source(tmp_path / "src")
    assert main(["data", "stage", "mixed", str(source)]) == 0
    first = capsys.readouterr().out.split()[0].split("@")[1]
    (source / "labels.csv").write_text("id,name\n0,zero\n")
    assert main(["data", "stage", "mixed", str(source)]) == 0
    second = capsys.readouterr().out.split()[0].split("@")[1]

    assert main(["data", "ls"]) == 0 and capsys.readouterr().out.split() == ["mixed"]
    assert main(["data", "ls", "mixed"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [first, second]
    assert main(["data", "show", "mixed", first[:6], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == first
    assert main(["data", "diff", "mixed", first, "latest"]) == 0
    assert "M labels.csv" in capsys.readouterr().out
    assert main(["data", "pull", "mixed", second]) == 0
    assert (Path(capsys.readouterr().out.strip()) / "labels.csv").read_text() == "id,name\n0,zero\n"


def test_cli_errors_are_one_line_naming_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHIPYARD_STORE_URI", str(tmp_path / "store"))

    assert main(["data", "stage", "mixed", str(tmp_path / "nowhere")]) == 1
    assert main(["data", "show", "mixed"]) == 1
    assert main(["data", "stage", "Bad Name", str(tmp_path)]) == 1

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("shipyard: error: ") for line in lines)
    assert "nowhere does not exist" in lines[0]
    assert "dataset 'mixed' has no versions" in lines[1]
    assert "dataset name 'Bad Name' is invalid" in lines[2]


def test_object_store_sends_where_botocore_would_with_the_chains_credentials(
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    from shipyard import storage
    from shipyard.datasets.s3objects import object_store

    # The process's one boto3 session resolves credentials once; start from none, and leave none behind.
    storage._boto_session.cache_clear()
    request.addfinalizer(storage._boto_session.cache_clear)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-chain")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    local = filesystem(Settings(store_uri="s3://bkt/prefix"))
    ours = object_store(local, local.s3_client(), "bkt")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    aws = filesystem(Settings(store_uri="s3://bkt/prefix"), client_kwargs={"region_name": "eu-west-1"})
    theirs = object_store(aws, aws.s3_client(), "bkt")

    assert ours.config["endpoint"] == "http://127.0.0.1:9001" and ours.config["checksum_algorithm"] == "sha256"
    assert ours.credential_provider is not None
    assert ours.credential_provider()["access_key_id"] == "from-the-chain"  # type: ignore[union-attr,index]
    assert "endpoint" not in theirs.config and theirs.config["region"] == "eu-west-1"


def test_manifest_streams_through_shards_and_keeps_the_inline_version_id(store: Store, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from shipyard.datasets import shards

    monkeypatch.setattr(shards, "SHARD_FILES", 2)
    result = datasets.stage(store, "mixed", str(make_source(tmp_path / "src")))

    files = list(datasets.iter_files(store, result.manifest))
    assert [f.path for f in files] == sorted(f.path for f in files) and len(files) == 5
    assert len(result.manifest.shards) == 3 and result.manifest.file_count == 5
    head = json.loads(Path(store.path(*manifest_key("mixed", result.version))).read_text())
    assert "files" not in head and head["shards"] == result.manifest.shards
    canon = json.dumps(sorted((f.path, f.size, f.sha256) for f in files), separators=(",", ":"))
    assert result.version == hashlib.sha256(canon.encode()).hexdigest()[:16]  # the id inline manifests had


def test_inline_manifests_written_before_shards_still_list_show_diff_and_pull(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "src")
    new = datasets.stage(store, "mixed", str(source))
    files = [f.model_dump() for f in datasets.iter_files(store, new.manifest)]
    old = {"dataset": "mixed", "version": "0ld0ld0ld0ld0ld0", "source": "somewhere", "files": files[1:],
           "created_at": "2020-01-01T00:00:00Z", "schemas": {}, "total_bytes": 1, "total_rows": None}
    store.write_bytes(json.dumps(old).encode(), *manifest_key("mixed", old["version"]))
    monkeypatch.setenv("SHIPYARD_STORE_URI", store.root)

    assert main(["data", "ls", "mixed"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [old["version"], new.version]
    assert main(["data", "show", "mixed", "0ld"]) == 0 and "4 files" in capsys.readouterr().out
    assert main(["data", "diff", "mixed", "0ld", new.version]) == 0
    assert f"+ {files[0]['path']}" in capsys.readouterr().out
    pulled = datasets.pull(store, "mixed", str(old["version"]), tmp_path / "cache")
    assert sorted(str(p.relative_to(pulled)) for p in pulled.rglob("*") if p.is_file()) == \
        sorted(f["path"] for f in files[1:])


def test_gc_lists_then_removes_only_old_unreferenced_objects_shards_and_partial_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHIPYARD_STORE_URI", str(tmp_path / "store"))
    store = filesystem(Settings(store_uri=str(tmp_path / "store")))
    version = datasets.stage(store, "mixed", str(make_source(tmp_path / "src"))).version
    kept = sorted(str(p) for p in Path(store.root).rglob("*") if p.is_file())
    old = time.time() - 2 * 86400
    litter = [Path(store.path(*object_key("ab" * 32))),
              Path(store.path("datasets", "mixed", "shards", "f" * 64 + ".jsonl")),
              Path(store.path("objects", "cd", "cd" * 32 + ".tmp-1234"))]
    for path in litter:
        _write(path, "left by a killed staging")
        os.utime(path, (old, old))
    fresh = Path(store.path(*object_key("ef" * 32)))  # could belong to a staging running now
    _write(fresh, "just uploaded")
    for path in Path(store.root).rglob("*"):
        if str(path) in kept:
            os.utime(path, (old, old))  # old too, but referenced

    assert main(["data", "gc"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[-1] for line in listed[:-1]) == sorted(str(p) for p in litter)
    assert listed[-1].startswith("3 stale uploads, objects and shards older than 24h found")
    assert all(p.exists() for p in litter)  # listing removes nothing

    assert main(["data", "gc", "--older-than", "1h", "--abort"]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith("3 stale uploads, objects and shards older than 1h removed")
    assert not any(p.exists() for p in litter) and fresh.exists()
    assert all(Path(p).exists() for p in kept)
    assert (datasets.pull(store, "mixed", version, tmp_path / "cache") / "labels.csv").exists()

    assert main(["data", "gc", "--older-than", "yesterday"]) == 1
    assert capsys.readouterr().err.strip() == ("shipyard: error: --older-than 'yesterday' is not an age: use a number "
                                               "with s, m, h or d (e.g. 24h)")
