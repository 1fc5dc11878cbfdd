"""An in-process fake Kubernetes API server over HTTP: enough of pods, jobs, services and events for our clients.

Supports GET (one object), LIST (label and field selectors, resourceVersion), WATCH (``watch=true``, streamed
JSON lines, honouring ``timeoutSeconds``), POST (create) and DELETE (Jobs take their pods with them unless
orphaned, as the garbage collector would). Objects are plain dicts, the API's JSON, so tests state exactly
what a real API server would hold.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.servers import free_port

# resource plural -> (API prefix, kind)
RESOURCES = {"pods": ("/api/v1", "Pod"), "events": ("/api/v1", "Event"), "jobs": ("/apis/batch/v1", "Job"),
             "services": ("/api/v1", "Service")}
_PATH = re.compile(
    r"^(?P<prefix>/api/v1|/apis/batch/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>\w+)(?:/(?P<name>[^/]+))?$")


def _field(obj: dict[str, Any], dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _selected(obj: dict[str, Any], labels: str | None, fields: str | None) -> bool:
    for term in filter(None, (labels or "").split(",")):
        key, _, want = term.partition("=")
        if obj.get("metadata", {}).get("labels", {}).get(key) != want.lstrip("="):
            return False
    for term in filter(None, (fields or "").split(",")):
        key, _, want = term.partition("=")
        if _field(obj, key) != want.lstrip("="):
            return False
    return True


class FakeKube:
    """The objects and the history of changes; thread-safe."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.changes: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, type, plural, object)
        self.requests: list[tuple[str, str]] = []
        self.version = 0
        self.lock = threading.Condition()
        self.url = ""

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object, as a controller would."""
        meta = obj.setdefault("metadata", {})
        prefix, kind = RESOURCES[plural]
        obj.setdefault("apiVersion", "v1" if prefix == "/api/v1" else "batch/v1")
        obj.setdefault("kind", kind)
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{meta['name']}")
        key = (plural, meta["namespace"], meta["name"])
        with self.lock:
            kind_of_change = "MODIFIED" if key in self.objects else "ADDED"
            self._record(kind_of_change, plural, obj)
            self.objects[key] = obj
        return obj

    def remove(self, plural: str, namespace: str, name: str, cascade: bool = True) -> dict[str, Any] | None:
        """Delete an object (and, with cascade, a Job's pods and whatever names it in its ownerReferences)."""
        with self.lock:
            obj = self.objects.pop((plural, namespace, name), None)
            if obj is not None:
                self._record("DELETED", plural, obj)
            if obj is not None and plural == "jobs" and cascade:
                for key in [k for k, o in self.objects.items() if k[0] == "pods" and k[1] == namespace
                            and o["metadata"].get("labels", {}).get("job-name") == name]:
                    self._record("DELETED", "pods", self.objects.pop(key))
            if obj is not None and cascade:  # the garbage collector, for dependents of the deleted object
                uid = obj["metadata"]["uid"]
                for key in [k for k, o in self.objects.items()
                            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", []))]:
                    self._record("DELETED", key[0], self.objects.pop(key))
        return obj

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        """Return a kubeconfig (as a dict) that points at this server with an anonymous user."""
        return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "anonymous", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "anonymous",
                                                          "namespace": namespace}}]}

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Return an object, or None."""
        with self.lock:
            return self.objects.get((plural, namespace, name))

    def _record(self, change: str, plural: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.changes.append((self.version, change, plural, json.loads(json.dumps(obj))))
        self.lock.notify_all()

    def listing(self, plural: str, namespace: str, labels: str | None, fields: str | None) -> dict[str, Any]:
        prefix, kind = RESOURCES[plural]
        with self.lock:
            items = [o for (p, ns, _), o in sorted(self.objects.items()) if p == plural and ns == namespace
                     and _selected(o, labels, fields)]
            version = str(self.version)
        api = "v1" if prefix == "/api/v1" else "batch/v1"
        return {"apiVersion": api, "kind": f"{kind}List", "metadata": {"resourceVersion": version}, "items": items}

    def stream(self, plural: str, namespace: str, labels: str | None, fields: str | None, since: int,
               timeout: float) -> Iterator[dict[str, Any]]:
        """Yield watch events after resourceVersion ``since`` until ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            with self.lock:
                fresh = [c for c in self.changes if c[0] > seen]
                if not fresh:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self.lock.wait(min(remaining, 0.2))
                    continue
            for rv, change, p, obj in fresh:
                seen = rv
                if p == plural and obj["metadata"].get("namespace") == namespace and _selected(obj, labels, fields):
                    yield {"type": change, "object": obj}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, message: str, reason: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                          "reason": reason, "code": code})

    def _route(self) -> tuple[re.Match[str] | None, dict[str, list[str]]]:
        url = urlparse(self.path)
        self.server.fake.requests.append((self.command, url.path))
        match = _PATH.match(url.path)
        if match and (match["plural"] not in RESOURCES or RESOURCES[match["plural"]][0] != match["prefix"]):
            match = None
        return match, parse_qs(url.query)

    def do_GET(self) -> None:
        match, query = self._route()
        if match is None:
            return self._status(404, f"the server could not find the requested resource {self.path}", "NotFound")
        fake, plural, ns, name = self.server.fake, match["plural"], match["ns"], match["name"]
        if name:
            obj = fake.get(plural, ns, name)
            if obj is None:
                return self._status(404, f'{plural} "{name}" not found', "NotFound")
            return self._send(200, obj)
        labels, fields = query.get("labelSelector", [None])[0], query.get("fieldSelector", [None])[0]
        if query.get("watch", ["false"])[0] in ("true", "1"):
            return self._watch(plural, ns, labels, fields, query)
        return self._send(200, fake.listing(plural, ns, labels, fields))

    def _watch(self, plural: str, ns: str, labels: str | None, fields: str | None,
               query: dict[str, list[str]]) -> None:
        since = int(query.get("resourceVersion", ["0"])[0] or 0)
        timeout = float(query.get("timeoutSeconds", ["30"])[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()  # no length: the body ends when the connection closes (HTTP/1.0)
        for event in self.server.fake.stream(plural, ns, labels, fields, since, timeout):
            self.wfile.write(json.dumps(event).encode() + b"\n")
            self.wfile.flush()

    def do_POST(self) -> None:
        match, _ = self._route()
        if match is None or match["name"]:
            return self._status(405, "method not allowed", "MethodNotAllowed")
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        body.setdefault("metadata", {})["namespace"] = match["ns"]
        if self.server.fake.get(match["plural"], match["ns"], body["metadata"].get("name", "")):
            return self._status(409, f'{match["plural"]} "{body["metadata"]["name"]}" already exists', "AlreadyExists")
        self._send(201, self.server.fake.put(match["plural"], body))

    def do_DELETE(self) -> None:
        match, query = self._route()
        if match is None or not match["name"]:
            return self._status(405, "method not allowed", "MethodNotAllowed")
        length = int(self.headers.get("Content-Length", 0) or 0)
        options = json.loads(self.rfile.read(length) or b"{}") if length else {}
        policy = options.get("propagationPolicy") or query.get("propagationPolicy", ["Background"])[0]
        obj = self.server.fake.remove(match["plural"], match["ns"], match["name"], cascade=policy != "Orphan")
        if obj is None:
            return self._status(404, f'{match["plural"]} "{match["name"]}" not found', "NotFound")
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKube


@contextmanager
def serve() -> Iterator[FakeKube]:
    """Run a fake API server on 127.0.0.1 for the duration of the block."""
    fake = FakeKube()
    server = _Server(("127.0.0.1", free_port()), _Handler)
    server.fake = fake
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fakekube", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
