"""An in-process fake Kubernetes API server over HTTP: enough of pods, jobs, events, deployments, services and
pod disruption budgets for our clients.

Supports GET (one object), LIST (label and field selectors, resourceVersion), WATCH (``watch=true``, streamed
JSON lines, honouring ``timeoutSeconds``), POST (create), PATCH (server-side apply only), the service proxy
(answered by ``FakeKube.backend`` on behalf of a ready pod the Service selects) and DELETE (Jobs take their
pods with them unless orphaned, as the garbage collector would). Objects are plain dicts, the API's JSON, so
tests state exactly what a real API server would hold.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.servers import free_port

# resource plural -> (API prefix, kind)
RESOURCES = {"pods": ("/api/v1", "Pod"), "events": ("/api/v1", "Event"), "jobs": ("/apis/batch/v1", "Job"),
             "services": ("/api/v1", "Service"), "deployments": ("/apis/apps/v1", "Deployment"),
             "poddisruptionbudgets": ("/apis/policy/v1", "PodDisruptionBudget")}
_PATH = re.compile(r"^(?P<prefix>/api/v1|/apis/batch/v1|/apis/apps/v1|/apis/policy/v1)/namespaces/(?P<ns>[^/]+)/"
                   r"(?P<plural>\w+)(?:/(?P<name>[^/]+))?$")
_PROXY = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/(?P<name>[^/:]+)(?::(?P<port>[^/]+))?/proxy"
                    r"(?P<path>/.*)?$")
# A backend answers a service-proxy request on behalf of one ready pod: (pod, method, path, body) -> (code, body).
Backend = Callable[[dict[str, Any], str, str, bytes], tuple[int, dict[str, Any]]]


def _api_version(prefix: str) -> str:
    return prefix.removeprefix("/apis/").removeprefix("/api/")


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
        self.applies: list[tuple[str, str, str | None, bool]] = []  # (plural, name, fieldManager, force)
        self.backend: Backend | None = None

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object, as a controller would."""
        meta = obj.setdefault("metadata", {})
        prefix, kind = RESOURCES[plural]
        obj.setdefault("apiVersion", _api_version(prefix))
        obj.setdefault("kind", kind)
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{meta['name']}")
        key = (plural, meta["namespace"], meta["name"])
        with self.lock:
            kind_of_change = "MODIFIED" if key in self.objects else "ADDED"
            self._record(kind_of_change, plural, obj)
            self.objects[key] = obj
        return obj

    def apply(self, plural: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply by the only manager there is: its fields replace labels, annotations and spec.

        ``metadata.generation`` counts spec changes, as the API server does; status is left to controllers.
        """
        with self.lock:
            old = self.objects.get((plural, namespace, name))
            meta = {**(old or {}).get("metadata", {}), "name": name, "namespace": namespace}
            for key in ("labels", "annotations"):
                meta[key] = body.get("metadata", {}).get(key) or {}
            obj = {**(old or {}), **{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}
            if old is None or old.get("spec") != obj.get("spec"):
                meta["generation"] = int(meta.get("generation", 0)) + 1
            return self.put(plural, json.loads(json.dumps(obj)))

    def proxy(self, namespace: str, service: str, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer a service-proxy request through one ready pod the Service selects, as kube-proxy would."""
        svc = self.get("services", namespace, service)
        if svc is None:
            return 404, {"kind": "Status", "code": 404, "message": f'services "{service}" not found'}
        selector = ",".join(f"{k}={v}" for k, v in svc["spec"].get("selector", {}).items())
        ready = [p for p in self.listing("pods", namespace, selector, None)["items"]
                 if any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in p.get("status", {}).get("conditions", []))]
        if not ready or self.backend is None:
            return 503, {"kind": "Status", "code": 503, "message": f'no endpoints available for service "{service}"'}
        return self.backend(ready[0], method, path, body)

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
        api = _api_version(prefix)
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
        if self._proxied():
            return None
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

    def _proxied(self) -> bool:
        url = urlparse(self.path)
        match = _PROXY.match(url.path)
        if match is None:
            return False
        self.server.fake.requests.append((self.command, url.path))
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        code, answer = self.server.fake.proxy(match["ns"], match["name"], self.command, match["path"] or "/", body)
        self._send(code, answer)
        return True

    def do_PATCH(self) -> None:
        match, query = self._route()
        if match is None or not match["name"]:
            return self._status(405, "method not allowed", "MethodNotAllowed")
        if self.headers.get("Content-Type") != "application/apply-patch+yaml":
            return self._status(415, "only server-side apply is supported", "UnsupportedMediaType")
        manager = query.get("fieldManager", [None])[0]
        if not manager:
            return self._status(422, "fieldManager is required for apply requests", "Invalid")
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        fake = self.server.fake
        fake.applies.append((match["plural"], match["name"], manager, query.get("force", ["false"])[0] == "true"))
        current = fake.get(match["plural"], match["ns"], match["name"])
        wanted_version = body.get("metadata", {}).get("resourceVersion")
        if wanted_version and (current is None or current["metadata"]["resourceVersion"] != wanted_version):
            return self._status(409, f'Operation cannot be fulfilled on {match["plural"]} "{match["name"]}": the '
                                "object has been modified; please apply your changes to the latest version and "
                                "try again", "Conflict")
        self._send(200, fake.apply(match["plural"], match["ns"], match["name"], body))

    def do_POST(self) -> None:
        if self._proxied():
            return None
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
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fakekube", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
