"""Staging throughput and memory: Shipyard vs plain boto3, side by side against one local S3 server.

Every contender talks to the same SeaweedFS server (``weed mini`` on 127.0.0.1, started here) and writes
to a prefix of its own, so nothing is deduplicated across contenders. Four measurements, one run:

1. many small files (2,000 x 10 KB): ``stage`` vs a sequential boto3 ``upload_file`` loop; beside it the
   server's raw ceiling (the same bytes PUT in parallel with no hashing or checks), and the two candidate
   transports doing staging's per-file work alone (obstore vs botocore's signer on kept-alive connections);
2. large files (20 x 50 MB): ``stage`` vs boto3's transfer manager (``upload_file``, default
   ``TransferConfig``), file by file, and the raw ceiling;
3. re-staging the unchanged 1 GB of (2): the second ``stage`` vs the first, and the bytes sent, counted
   at an HTTP proxy in front of the server;
4. peak memory (max RSS of a fresh process) while staging 2 GB.

``--scaling [N ...]`` runs only the file-count case instead: N tiny CSV files (default 10,000 and
100,000) staged onto a local store and re-staged unchanged, each in a fresh process (time per file, peak RSS).

    .venv/bin/python -m bench.staging [--quick] [--workdir DIR] [--scaling [N ...]]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from shipyard import datasets
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem
from tests import seaweedfs, servers
from tests.faultproxy import FaultProxy

BUCKET = "bench"
CREDENTIALS = {"key": "testing", "secret": "testing"}
MB = 10**6


@dataclass(frozen=True)
class Sizes:
    """How much data each measurement moves."""

    small_files: int
    large_files: int
    large_size: int
    memory_files: int
    memory_size: int


FULL = Sizes(small_files=2000, large_files=20, large_size=50 * MB, memory_files=16, memory_size=125 * MB)
QUICK = Sizes(small_files=500, large_files=6, large_size=50 * MB, memory_files=4, memory_size=125 * MB)


def write_files(directory: Path, count: int, size: int) -> Path:
    """Write ``count`` files of ``size`` random bytes (incompressible, all distinct)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"file-{i:05d}.bin").write_bytes(os.urandom(size))
    return directory


def store(endpoint: str, prefix: str) -> Store:
    return filesystem(Settings(store_uri=f"s3://{BUCKET}/{prefix}"), endpoint_url=endpoint, **CREDENTIALS)


def boto_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=CREDENTIALS["key"], aws_secret_access_key=CREDENTIALS["secret"])


def server_cpu(pid: int) -> float:
    """Return the CPU seconds a process has used (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu() -> float:
    """Return the CPU seconds this process has used (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], Any], server_pid: int) -> tuple[float, str, Any]:
    """Run ``fn``; return wall seconds, the CPU seconds client and server used meanwhile, and its result."""
    cpu, mine = server_cpu(server_pid), client_cpu()
    start = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    return wall, f"CPU: client {client_cpu() - mine:.1f} s, server {server_cpu(server_pid) - cpu:.1f} s", result


def boto_loop(endpoint: str, directory: Path, prefix: str) -> None:
    """The baseline: boto3 ``upload_file`` (default TransferConfig) for one file after another."""
    client = boto_client(endpoint)
    for path in sorted(directory.iterdir()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")


def raw_ceiling(endpoint: str, directory: Path, prefix: str, jobs: int = 16) -> None:
    """The server's ceiling: the same bytes PUT in parallel (obstore, async), no hashing, checksum or checks."""
    import asyncio

    import obstore
    from obstore.store import S3Store

    raw = S3Store(BUCKET, config={"endpoint": endpoint, "region": "us-east-1", "access_key_id": CREDENTIALS["key"],
                                  "secret_access_key": CREDENTIALS["secret"], "unsigned_payload": True},
                  client_options={"allow_http": True})
    paths = sorted(p for p in directory.rglob("*") if p.is_file())

    async def put_all() -> None:
        gate = asyncio.Semaphore(jobs)

        async def one(path: Path) -> None:
            async with gate:
                await obstore.put_async(raw, f"{prefix}/{path.name}", path, max_concurrency=4)

        await asyncio.gather(*(one(p) for p in paths))

    asyncio.run(put_all())


def obstore_put(endpoint: str, directory: Path, prefix: str, jobs: int = 16) -> None:
    """Transport A as staging uses it: read, SHA-256, create-only PUT with a checksum, ETag checked (obstore)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import obstore
    from obstore.store import S3Store

    client = store(endpoint, prefix).s3_client()
    from shipyard.datasets.s3objects import object_store

    target: S3Store = object_store(store(endpoint, prefix), client, BUCKET)

    def one(path: Path) -> None:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        answer = obstore.put(target, f"{prefix}/{sha}", data, mode="create")
        assert str(answer["e_tag"]).strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, sorted(directory.iterdir())))


def botocore_signer_put(endpoint: str, directory: Path, prefix: str, jobs: int = 16) -> None:
    """Transport B, the same work: botocore's SigV4 signer over one kept-alive ``http.client`` connection per
    thread (the lean path staging used before, with the hand-written signing swapped for botocore's)."""
    import base64
    import hashlib
    import http.client
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signer = S3SigV4Auth(Credentials(CREDENTIALS["key"], CREDENTIALS["secret"]), "s3", "us-east-1")
    url = urlsplit(endpoint)
    local = threading.local()

    def one(path: Path) -> None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        key = f"/{BUCKET}/{prefix}/{digest.hex()}"
        request = AWSRequest("PUT", endpoint + key, data=data,
                             headers={"x-amz-checksum-sha256": base64.b64encode(digest).decode(), "If-None-Match": "*"})
        signer.add_auth(request)
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=60)
        local.conn.request("PUT", key, body=data, headers=dict(request.headers.items()))
        answer = local.conn.getresponse()
        answer.read()
        assert answer.status == 200, answer.status
        assert answer.getheader("ETag", "").strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, sorted(directory.iterdir())))


def stage_child(args: argparse.Namespace) -> None:
    """Stage a directory in this fresh process and print its peak RSS in MB (measurement 4)."""
    result = datasets.stage(store(args.endpoint, args.prefix), "memory", args.source)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{peak_kb / 1024:.0f} {result.bytes_uploaded}")


def peak_memory(endpoint: str, source: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench.staging", "--child-stage", str(source), "--endpoint", endpoint,
                          "--prefix", "memory"], check=True, capture_output=True, text=True).stdout.split()
    return time.perf_counter() - start, float(out[0]), int(out[1])


def write_tiny_csvs(directory: Path, count: int, per_dir: int = 1000) -> Path:
    """Write ``count`` distinct tiny CSV files, ``per_dir`` to a directory (as image datasets are laid out)."""
    for i in range(count):
        sub = directory / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:07d}.csv").write_text(f"id,value\n{i},{i * 7 % 13}\n")
    return directory


def local_child(args: argparse.Namespace) -> None:
    """Stage onto a local store in this fresh process; print wall seconds, peak RSS (MB) and files hashed."""
    start = time.perf_counter()
    result = datasets.stage(filesystem(Settings(store_uri=args.store)), "scale", args.local_source,
                            hash_cache=Path(args.cache))
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{wall:.3f} {peak_kb / 1024:.0f} {result.files_hashed} {int(result.created)}")


def scaling(counts: list[int], work: Path) -> list[str]:
    """Stage ``count`` tiny CSVs onto a local store, then re-stage them unchanged, each in a fresh process."""
    rows = ["| files | first staging | per file | peak RSS | re-stage unchanged | per file | peak RSS |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for count in counts:
        source = write_tiny_csvs(work / f"tiny-{count}", count)
        time.sleep(0.2)  # past the hash cache's racy window
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-m", "bench.staging", "--child-local", str(source),
                                  "--store", str(work / f"store-{count}"), "--cache", str(work / f"h-{count}.db")],
                                 check=True, capture_output=True, text=True).stdout.split()
            runs.append((float(out[0]), float(out[1]), int(out[2])))
        (first, first_rss, _), (again, again_rss, rehashed) = runs
        rows.append(f"| {count:,} | {first:.1f} s | {first / count * 1e6:.0f} µs | {first_rss:.0f} MB | "
                    f"{again:.2f} s ({rehashed} hashed) | {again / count * 1e6:.1f} µs | {again_rss:.0f} MB |")
        shutil.rmtree(source)
    return rows


def run(sizes: Sizes, work: Path) -> list[str]:
    """Run the four measurements and return the report lines (markdown)."""
    proc, endpoint = seaweedfs.start(work / "seaweedfs")
    try:
        boto_client(endpoint).create_bucket(Bucket=BUCKET)
        small = write_files(work / "small", sizes.small_files, 10_000)
        large = write_files(work / "large", sizes.large_files, sizes.large_size)
        time.sleep(0.2)  # files written this instant are 'racily clean' and never trusted from the hash cache
        cache = work / "hashes.sqlite"
        rows = []

        base, base_cpu, _ = timed(lambda: boto_loop(endpoint, small, "boto-small"), proc.pid)
        ours, ours_cpu, _ = timed(lambda: datasets.stage(store(endpoint, "ship-small"), "small", str(small)), proc.pid)
        ceiling, ceiling_cpu, _ = timed(lambda: raw_ceiling(endpoint, small, "raw-small"), proc.pid)
        rows.append(f"| {sizes.small_files:,} files x 10 KB | sequential `upload_file` loop | {base:.2f} s "
                    f"({base_cpu}) | {ours:.2f} s ({ours_cpu}) | **{base / ours:.1f}x** | >= 8x |")
        rows.append(f"| (same) server's raw ceiling | parallel PUTs, no hashing or checks | {ceiling:.2f} s "
                    f"({ceiling_cpu}) | staging at {ceiling / ours:.0%} of it | {base / ceiling:.1f}x | - |")
        obs, obs_cpu, _ = timed(lambda: obstore_put(endpoint, small, "obstore-small"), proc.pid)
        bsig, bsig_cpu, _ = timed(lambda: botocore_signer_put(endpoint, small, "botosig-small"), proc.pid)
        rows.append(f"| (same) transport alone, 16 threads | botocore signer + kept-alive `http.client` | {bsig:.2f} s "
                    f"({bsig_cpu}) | obstore {obs:.2f} s ({obs_cpu}) | {bsig / obs:.2f}x | - |")

        base, base_cpu, _ = timed(lambda: boto_loop(endpoint, large, "boto-large"), proc.pid)
        first, first_cpu, _ = timed(lambda: datasets.stage(store(endpoint, "ship-large"), "large", str(large),
                                                           hash_cache=cache), proc.pid)
        ceiling, ceiling_cpu, _ = timed(lambda: raw_ceiling(endpoint, large, "raw-large", jobs=4), proc.pid)
        rows.append(f"| {sizes.large_files} files x {sizes.large_size // MB} MB | transfer manager, file by file | "
                    f"{base:.2f} s ({base_cpu}) | {first:.2f} s ({first_cpu}) | "
                    f"**{base / first:.2f}x** | >= 2x |")
        rows.append(f"| (same) server's raw ceiling | parallel multipart PUTs, no hashing or checks | "
                    f"{ceiling:.2f} s ({ceiling_cpu}) | staging at {ceiling / first:.0%} of it | "
                    f"{base / ceiling:.2f}x | - |")

        with FaultProxy(endpoint) as proxy:  # counts what the re-stage sends
            again, _, result = timed(lambda: datasets.stage(store(proxy.url, "ship-large"), "large", str(large),
                                                            hash_cache=cache), proc.pid)
            sent = proxy.bytes_received
        total = sizes.large_files * sizes.large_size
        rows.append(f"| re-stage unchanged {total / 1e9:.1f} GB | first staging of the same data | {first:.2f} s | "
                    f"{again:.3f} s, {sent} request-body bytes sent, {result.bytes_uploaded} uploaded | "
                    f"**{first / again:.0f}x** | >= 100x, 0 bytes |")

        shutil.rmtree(small)
        memory = write_files(work / "memory", sizes.memory_files, sizes.memory_size)
        wall, peak, uploaded = peak_memory(endpoint, memory)
        rows.append(f"| peak memory staging {sizes.memory_files * sizes.memory_size / 1e9:.1f} GB | - | - | "
                    f"max RSS {peak:.0f} MB ({uploaded / 1e9:.1f} GB in {wall:.1f} s, fresh process) | - | < 300 MB |")
        return ["| measurement | baseline | baseline time | Shipyard | ratio | target |",
                "| --- | --- | --- | --- | --- | --- |", *rows]
    finally:
        servers.stop(proc)


def main() -> None:
    """Parse options and run the benchmark (or the memory child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="less data: 500 small files, 6 x 50 MB, 0.5 GB")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--scaling", type=int, nargs="*", default=None,
                        help="only the file-count scaling case on a local store (default counts: 10000 100000)")
    parser.add_argument("--child-stage", dest="source", help=argparse.SUPPRESS)
    parser.add_argument("--child-local", dest="local_source", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.source:
        stage_child(args)
        return
    if args.local_source:
        local_child(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-staging-", dir=args.workdir))
    try:
        started = time.perf_counter()
        if args.scaling is not None:
            print("\n".join(scaling(args.scaling or [10_000, 100_000], work)))
            return
        lines = run(QUICK if args.quick else FULL, work)
        print("\n".join(lines))
        print(f"\n(SeaweedFS {seaweedfs_version()} on 127.0.0.1, {os.cpu_count()} CPUs shared by client and server; "
              f"bench took {time.perf_counter() - started:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seaweedfs_version() -> str:
    out = subprocess.run([seaweedfs.weed_binary(), "version"], capture_output=True, text=True).stdout.split()
    return out[2] if len(out) > 2 else "?"


if __name__ == "__main__":
    main()
