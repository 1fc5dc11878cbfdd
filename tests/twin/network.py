"""Pod IPs on loopback addresses and the cluster DNS table that the pod hook reads.

Addresses come from 127.42.<worker>.<n> (pods) and 127.43.<worker>.<n> (Service ClusterIPs), one /24 per
pytest-xdist worker (``PYTEST_XDIST_WORKER``), so two workers never collide. Never a private or public range.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def _worker_octet() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw-1")  # the test process's worker, not a pod's
    digits = worker.removeprefix("gw")
    return (int(digits) + 1) % 250 + 1 if digits.lstrip("-").isdigit() else 1


class Network:
    """Hands out pod and ClusterIP addresses and keeps the DNS table file up to date."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dns_dir = root / "dns"
        self.dns_dir.mkdir(parents=True, exist_ok=True)
        self.dns_file = self.dns_dir / "hosts.json"
        self._octet = _worker_octet()
        self._next_pod = 2
        self._lock = threading.Lock()
        self._names: dict[str, list[str]] = {}
        self._write()

    def pod_ip(self) -> str:
        """Allocate one pod IP."""
        with self._lock:
            n = self._next_pod
            self._next_pod += 1
        if n > 254:
            raise RuntimeError(f"pod IP range 127.42.{self._octet}.0/24 is used up")
        return f"127.42.{self._octet}.{n}"

    def publish(self, name: str, ips: list[str]) -> None:
        """Make a fully qualified cluster name resolve to ``ips`` inside pods."""
        with self._lock:
            self._names[name] = ips
            self._write()

    def _write(self) -> None:
        tmp = self.dns_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._names))
        tmp.replace(self.dns_file)

    def service(self, namespace: str, name: str, ips: list[str]) -> None:
        """Publish a Service's name as CoreDNS answers it (``<svc>.<ns>.svc.cluster.local``)."""
        self.publish(f"{name}.{namespace}.svc.cluster.local", ips)

    def table(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._names)
