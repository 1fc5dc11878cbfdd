"""Loaded in every Python process inside a twin pod (the image's .pth, when the pod marker file exists).

It makes the pod's view of the network what a container's is: cluster DNS names resolve as CoreDNS would
(from the DNS table the twin keeps, with the pod's namespace search path), and a bind to 0.0.0.0 or :: binds
the pod's own IP, which stands in for the container's network namespace. Unknown names go to the real resolver.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

MARKER = Path("/run/shipyard-twin/pod.json")


def _install() -> None:
    pod = json.loads(MARKER.read_text())
    pod_ip, namespace, table_path = pod["podIP"], pod["namespace"], Path(pod["dnsTable"])
    real_getaddrinfo, real_bind = socket.getaddrinfo, socket.socket.bind

    def lookup(host: str) -> list[str] | None:
        try:
            table: dict[str, list[str]] = json.loads(table_path.read_text())
        except (OSError, ValueError):
            return None
        name = host.rstrip(".")
        for suffix in ("", f".{namespace}.svc.cluster.local", ".svc.cluster.local", ".cluster.local"):
            if name + suffix in table:
                return table[name + suffix]
        return None

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        ips = lookup(host) if isinstance(host, str) else None
        if ips:
            return [r for ip in ips for r in real_getaddrinfo(ip, port, *args, **kwargs)]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        ips = lookup(host)
        return ips[0] if ips else real_getaddrinfo(host, None, socket.AF_INET)[0][4][0]

    def bind(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address and address[0] in ("", "0.0.0.0", "::"):
            if self.family == socket.AF_INET6:
                return real_bind(self, (f"::ffff:{pod_ip}", *address[1:]))
            address = (pod_ip, *address[1:])
        return real_bind(self, address)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.gethostbyname = gethostbyname
    socket.socket.bind = bind  # type: ignore[method-assign]


if MARKER.exists():
    _install()
