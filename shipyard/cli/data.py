"""``shipyard data stage|ls|show|pull|diff|gc``: dataset versions from the terminal."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from shipyard import datasets
from shipyard.cli.events import announce_staged
from shipyard.datasets.gc import Collector
from shipyard.datasets.report import diff_lines, human_size, totals
from shipyard.datasets.stage import Progress as StageProgressCallback
from shipyard.errors import ConfigError
from shipyard.params import NAME_PATTERN
from shipyard.settings import Settings, load_settings
from shipyard.storage import Store, filesystem

PHASE_LABELS = {"hash": "Hashing", "inspect": "Checking formats", "upload": "Uploading"}


def register(sub: Any) -> None:
    """Add ``data`` and its subcommands."""
    data = sub.add_parser("data", help="stage, list, show, pull, diff and garbage-collect dataset versions",
                          description="Immutable, content-addressed dataset versions in the store "
                          "(SHIPYARD_STORE_URI).")
    verbs = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    stage = verbs.add_parser("stage", help="stage a directory, glob or fsspec URI as a new version",
                             description="Upload the files the store lacks, validate them, and publish a manifest.")
    stage.add_argument("name", help="dataset name (lowercase letters, digits, '.', '_', '-')")
    stage.add_argument("source", help="local directory, glob or fsspec URI (s3://bucket/path)")
    stage.add_argument("--jobs", type=int, default=16, help="parallel reads and uploads (default 16)")
    stage.add_argument("--rehash", action="store_true",
                       help="hash every file again instead of trusting the local cache")
    stage.set_defaults(func=cmd_stage)
    ls = verbs.add_parser("ls", help="list datasets, or the versions of one", description="List datasets or versions.")
    ls.add_argument("name", nargs="?", help="dataset whose versions to list")
    ls.set_defaults(func=cmd_ls)
    show = verbs.add_parser("show", help="show a version's files and schema", description="Show a manifest.")
    show.add_argument("name")
    show.add_argument("version", nargs="?", default="latest", help="version id, unique prefix or 'latest' (default)")
    show.add_argument("--json", action="store_true", help="print the manifest as stored")
    show.set_defaults(func=cmd_show)
    pull = verbs.add_parser("pull", help="download a version into the local cache and print its directory",
                            description="Download exactly one version, verifying every file's SHA-256.")
    pull.add_argument("name")
    pull.add_argument("version", nargs="?", default="latest", help="version id, unique prefix or 'latest' (default)")
    pull.add_argument("--cache", type=Path, default=None,
                      help="cache directory (default: <SHIPYARD_HOME>/cache/datasets)")
    pull.set_defaults(func=cmd_pull)
    diff = verbs.add_parser("diff", help="compare two versions", description="Files added, removed and changed.")
    diff.add_argument("name")
    diff.add_argument("old", help="older version (id, prefix or 'latest')")
    diff.add_argument("new", help="newer version (id, prefix or 'latest')")
    diff.set_defaults(func=cmd_diff)
    gc = verbs.add_parser("gc", help="list (or remove) what no version needs: stale uploads, unreferenced objects",
                          description="List incomplete multipart uploads, and objects and manifest shards no "
                          "version names, older than --older-than; with --abort, abort and delete them. Run it "
                          "when no staging is running.")
    gc.add_argument("--older-than", default="24h", metavar="AGE",
                    help="only what is older than this: a number with s, m, h or d (default 24h)")
    gc.add_argument("--abort", action="store_true", help="abort the uploads and delete the objects (default: list)")
    gc.set_defaults(func=cmd_gc)


def _store() -> tuple[Settings, Store]:
    settings = load_settings()
    return settings, filesystem(settings)


def _check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(f"dataset name '{name}' is invalid: use lowercase letters, digits, '.', '_' and '-'")


@contextmanager
def _progress_bar() -> Iterator[StageProgressCallback]:
    """Show a progress bar on stderr (when it is a terminal) that follows the staging phases."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<17}"), BarColumn(), TextColumn("{task.fields[amount]:>22}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def update(event: datasets.StageProgress) -> None:
            if event.unit == "bytes":
                amount = f"{human_size(event.done)} / {human_size(event.total)}"
            else:
                amount = f"{event.done} / {event.total} {event.unit}"
            if event.phase not in tasks:
                tasks[event.phase] = bar.add_task(PHASE_LABELS.get(event.phase, event.phase), total=event.total,
                                                  amount=amount)
            bar.update(tasks[event.phase], completed=event.done, total=event.total, amount=amount)

        yield update


def cmd_stage(args: argparse.Namespace) -> int:
    """Stage a source and print the version id."""
    _check_name(args.name)
    settings, store = _store()
    source = args.source if "://" in args.source else str(Path(args.source).expanduser().absolute())
    options = datasets.StageOptions(jobs=max(1, args.jobs))
    cache = None if args.rehash else settings.hash_cache()
    with _progress_bar() as progress:
        result = datasets.stage(store, args.name, source, progress=progress, options=options, hash_cache=cache)
    state = "staged" if result.created else "already staged"
    print(f"{args.name}@{result.version} {state}: {totals(result.manifest)}; "
          f"uploaded {result.files_uploaded} objects, {human_size(result.bytes_uploaded)}")
    if result.created and (api_url := announce_staged(settings, store, result.manifest)):
        print(f"announced {args.name}@{result.version} to Prefect at {api_url} (new-data deployments retrain on it)")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """List datasets, or one dataset's versions, newest last."""
    _, store = _store()
    if args.name is None:
        names = datasets.list_datasets(store)
        hint = f"no datasets in {store.url('datasets')} (stage one with: shipyard data stage NAME SOURCE)"
        print("\n".join(names) if names else hint)
        return 0
    versions = datasets.list_versions(store, args.name)
    if not versions:
        print(f"dataset '{args.name}' has no versions in {store.url('datasets', args.name)}")
    for m in versions:
        print(f"{m.version}  {m.created_at:%Y-%m-%d %H:%M:%S}Z  {totals(m):<40}  {m.source}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print a manifest as a summary, or as JSON."""
    _, store = _store()
    manifest = datasets.load_manifest(store, args.name, datasets.resolve_version(store, args.name, args.version))
    if args.json:
        print(manifest.to_json().decode())
        return 0
    print(f"{manifest.dataset}@{manifest.version}  {totals(manifest)}")
    print(f"source:  {manifest.source}\ncreated: {manifest.created_at.isoformat()}")
    for group, columns in manifest.schemas.items():
        print(f"schema {group}: " + ", ".join(f"{k}:{v}" for k, v in columns.items()))
    for entry in datasets.iter_files(store, manifest):
        rows = "" if entry.rows is None else f"{entry.rows:>10,} rows"
        print(f"  {entry.sha256[:12]}  {human_size(entry.size):>9}  {entry.format:<7} {rows:>15}  {entry.path}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Pull a version into the cache and print its directory."""
    settings, store = _store()
    version = datasets.resolve_version(store, args.name, args.version)
    cache = args.cache or settings.home / "cache" / "datasets"
    print(datasets.pull(store, args.name, version, cache))
    return 0


def parse_age(text: str) -> timedelta:
    """Turn '90s', '30m', '24h' or '7d' into a duration."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise ConfigError(f"--older-than {text!r} is not an age: use a number with s, m, h or d (e.g. 24h)")
    return timedelta(seconds=float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)])


def cmd_gc(args: argparse.Namespace) -> int:
    """List, or with --abort remove, what no version needs; print one line each and a total."""
    age = parse_age(args.older_than)
    _, store = _store()
    collector = Collector(store)
    count = size = 0
    for item in collector.find(age):
        if args.abort:
            collector.remove(item)
        count, size = count + 1, size + item.size
        verb = ("aborted" if item.kind == "upload" else "deleted") if args.abort else item.kind
        print(f"{verb:<8} {item.modified:%Y-%m-%d %H:%M:%S}Z  {human_size(item.size):>9}  {item.url}")
    done = "removed" if args.abort else "found (remove with --abort)"
    print(f"{count} stale uploads, objects and shards older than {args.older_than} {done}: {human_size(size)}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """Print what changed between two versions; exit 0 either way."""
    _, store = _store()
    old = datasets.load_manifest(store, args.name, datasets.resolve_version(store, args.name, args.old))
    new = datasets.load_manifest(store, args.name, datasets.resolve_version(store, args.name, args.new))
    print(f"{args.name}: {old.version} -> {new.version}")
    print("\n".join(diff_lines(datasets.diff(store, old, new))))
    sys.stdout.flush()
    return 0
