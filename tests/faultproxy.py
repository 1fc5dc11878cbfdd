"""An HTTP proxy on 127.0.0.1 in front of an S3 server that injects faults: 5xx, SlowDown, resets, corruption.

``drop-answer`` forwards the request, then resets the connection instead of answering: the server did the
work, the client never hears of it (what a server killed right after committing looks like).

Point a client at ``proxy.url`` instead of the server. Each rule fires on the next ``times`` requests it
matches; everything else passes through unchanged. ``proxy.events`` records every request with the
fault injected (or the upstream status) and the SDK's attempt header, so tests can see each retry.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = {"500", "401", "503-slowdown", "reset", "corrupt", "delay", "drop-answer"}
_ERRORS = {"500": (500, "InternalError", "We encountered an internal error. Please try again."),
           "503-slowdown": (503, "SlowDown", "Please reduce your request rate."),
           "401": (401, "Unauthorized", "Credentials are missing or invalid.")}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}


@dataclass
class Rule:
    """Inject ``fault`` into the next ``times`` requests with this method whose path contains ``path``."""

    fault: str
    method: str = "PUT"
    path: str = ""
    times: int = 1
    delay: float = 0.0


@dataclass(frozen=True)
class Event:
    """One request the proxy saw."""

    method: str
    path: str
    outcome: str  # the fault injected, or the upstream status code
    attempt: int  # from botocore's 'amz-sdk-request: attempt=N; max=M' header (1 if absent)


class FaultProxy:
    """A threaded HTTP proxy; use as a context manager."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules: list[Rule] = []
        self.events: list[Event] = []
        self.bytes_received = 0  # request-body bytes clients sent through the proxy
        self.injected = 0  # faults injected, delays included
        self.on_fault: Callable[[Event], None] | None = None  # called as a fault is injected, before the client hears
        self._chaos: tuple[float, tuple[str, ...], float, random.Random] | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fault-proxy",
                                        daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, fault: str, method: str = "PUT", path: str = "", times: int = 1, delay: float = 0.0) -> None:
        """Add a rule (see :class:`Rule`)."""
        assert fault in FAULTS, fault
        with self._lock:
            self.rules.append(Rule(fault, method, path, times, delay))

    def clear(self) -> None:
        """Drop every rule still armed, and stop random faults."""
        with self._lock:
            self.rules.clear()
            self._chaos = None

    def randomly(self, rate: float, faults: tuple[str, ...] = ("reset", "500", "503-slowdown", "delay"),
                 delay: float = 0.2, seed: int = 0) -> None:
        """Inject one of ``faults`` into each request (any method) with probability ``rate``, from a seeded draw."""
        assert 0 <= rate <= 1 and set(faults) <= FAULTS, (rate, faults)
        with self._lock:
            self._chaos = (rate, faults, delay, random.Random(seed))

    def take(self, method: str, path: str) -> Rule | None:
        """Return (and use up one shot of) the first armed rule matching a request."""
        with self._lock:
            for rule in self.rules:
                if rule.times > 0 and rule.method == method and rule.path in path:
                    rule.times -= 1
                    self.injected += 1
                    return rule
            if self._chaos is not None:
                rate, faults, delay, draw = self._chaos
                if draw.random() < rate:
                    self.injected += 1
                    return Rule(draw.choice(faults), method, path, delay=delay)
        return None

    def record(self, event: Event, body_bytes: int = 0) -> None:
        """Remember a request (and tell ``on_fault`` of an injected fault)."""
        with self._lock:
            self.events.append(event)
            self.bytes_received += body_bytes
        if self.on_fault is not None and event.outcome in FAULTS:
            self.on_fault(event)

    def seen(self, outcome: str | None = None, method: str | None = None, path: str = "") -> list[Event]:
        """Return the recorded requests matching the filters."""
        with self._lock:
            return [e for e in self.events if (outcome is None or e.outcome == outcome)
                    and (method is None or e.method == method) and path in e.path]


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and '100 Continue' for botocore's large bodies

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            header = self.headers.get("amz-sdk-request", "")
            attempt = int(header.split("attempt=")[1].split(";")[0]) if "attempt=" in header else 1
            rule = proxy.take(self.command, self.path)
            fault = rule.fault if rule else None
            if rule is not None and fault == "delay":
                time.sleep(rule.delay)
            if fault == "drop-answer":
                self._forward(body)  # (an upstream that is down raises, which resets the connection too)
            if fault in {"reset", "drop-answer"}:
                proxy.record(Event(self.command, self.path, str(fault), attempt))
                self._reset()
                return
            if fault in _ERRORS:
                status, code, message = _ERRORS[fault]
                xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                       f"<Message>{message}</Message></Error>")
                proxy.record(Event(self.command, self.path, fault, attempt))  # before answering: no race with tests
                self._answer(status, [("Content-Type", "application/xml")], xml.encode())
                return
            if fault == "corrupt" and body:
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            try:
                status, headers, data = self._forward(body)
            except OSError:  # the server is down: its client would see the connection refused or reset
                proxy.record(Event(self.command, self.path, "upstream-down", attempt))
                self._reset()
                return
            outcome = str(status) if fault in {None, "delay"} else str(fault)
            proxy.record(Event(self.command, self.path, outcome, attempt), len(body))
            self._answer(status, headers, data)

        def _reset(self) -> None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # RST: the client sees 'connection reset by peer'
            self.close_connection = True

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body if body or self.command in {"PUT", "POST"} else None,
                             headers=headers)
                response = conn.getresponse()
                data = response.read()
                dropped = _HOP_BY_HOP if self.command == "HEAD" else _HOP_BY_HOP | {"content-length"}
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in dropped]
                return response.status, kept, data
            finally:
                conn.close()

        def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response_only(status)
            for key, value in headers:
                self.send_header(key, value)
            if self.command != "HEAD" or not any(k.lower() == "content-length" for k, _ in headers):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _relay

    return Handler
