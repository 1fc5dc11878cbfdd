"""The twin's API server: HTTPS over the store, with authentication, RBAC, admission and the subresources.

Interface:

    with serve() as twin:                      a Twin on https://127.0.0.1:<port>, its CA made at start
        twin.store                             the Store (tests/twin/store.py)
        twin.url, twin.ca_pem                  server URL and the CA certificate (PEM bytes)
        twin.token_for(user: UserInfo) -> str  a bearer token; a ServiceAccount's only if it exists
        twin.kubeconfig(user, namespace="default") -> dict     a kubeconfig with the CA data and the token
        twin.admin                             UserInfo("kubernetes-admin", ("system:masters", ...))
        twin.service_account_files(ns, sa) -> dict[str, bytes] token, ca.crt, namespace (in-cluster files)
        twin.requests -> list[RequestRecord]   every request: user, RBAC attributes, HTTP status
        twin.unmodelled -> list[str]           requests answered 501; ``assert_all_modelled()`` fails on any

Every request needs ``Authorization: Bearer <token>`` (else 401). Resource requests are authorized by
``rbac.authorize`` with the API server's attributes (system:masters bypass); denials answer 403 with
``rbac.forbidden_message``. Pods pass ``store.admit_pod`` on create/update. Supported: get, list (label and
field selectors, limit/continue), watch, create, update (PUT), patch (apply, merge, strategic), delete,
deletecollection is unmodelled; pods/log (follow), services/proxy and pods/proxy (forwarded with httpx to the
Endpoints' pod IP), */status, (Self)SubjectAccessReview, discovery (/api, /apis, /version); ``dryRun=All``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.servers import free_port
from tests.twin import rbac
from tests.twin.rbac import Request, UserInfo
from tests.twin.resources import GROUP_VERSIONS, RESOURCES, SelectorError
from tests.twin.store import RequestRecord, Store, StoreError

ADMIN = UserInfo("kubernetes-admin", ("system:masters", "system:authenticated"))
# Query parameters that do not change what is answered (or that the twin honours).
_KNOWN_QUERY = {"labelSelector", "fieldSelector", "watch", "resourceVersion", "timeoutSeconds", "limit", "continue",
                "allowWatchBookmarks", "fieldManager", "force", "dryRun", "propagationPolicy", "pretty", "container",
                "follow", "tailLines", "previous", "timestamps", "gracePeriodSeconds", "fieldValidation",
                "resourceVersionMatch"}


class Unmodelled(Exception):
    """A request the twin does not model: answered 501 and recorded."""


@dataclass
class Attributes:
    """A parsed request path: the resource request's parts, as the API server's RequestInfo has them."""

    group: str
    version: str
    resource: str
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    rest: str = ""  # what follows a proxy subresource


def _self_signed() -> tuple[bytes, bytes, bytes]:
    """Return (CA cert PEM, server cert PEM, server key PEM) for 127.0.0.1 and localhost."""
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=2)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("twin-ca")).issuer_name(name("twin-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(end).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans = [x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name("kube-apiserver")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(end).add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ca.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class Twin:
    """The running API server: its store, identities and request log."""

    store: Store
    url: str = ""
    ca_pem: bytes = b""
    tokens: dict[str, UserInfo] = field(default_factory=dict)
    unmodelled: list[str] = field(default_factory=list)
    admin: UserInfo = ADMIN

    @property
    def requests(self) -> list[RequestRecord]:
        return self.store.requests

    def token_for(self, user: UserInfo) -> str:
        """Issue a bearer token for ``user``; a ServiceAccount must exist."""
        parts = user.name.split(":")
        if user.name.startswith("system:serviceaccount:") and self.store.get(
                "serviceaccounts", parts[2], parts[3]) is None:
            raise KeyError(f"serviceaccount {parts[2]}/{parts[3]} does not exist: no token for it")
        for token, known in self.tokens.items():
            if known == user:
                return token
        token = secrets.token_urlsafe(24)
        self.tokens[token] = user
        return token

    def user_of(self, token: str) -> UserInfo | None:
        """Return who a token belongs to (a deleted ServiceAccount's token no longer authenticates)."""
        user = self.tokens.get(token)
        if user is not None and user.name.startswith("system:serviceaccount:"):
            _, _, ns, name = user.name.split(":")
            if self.store.get("serviceaccounts", ns, name) is None:
                return None
        return user

    def kubeconfig(self, user: UserInfo = ADMIN, namespace: str = "default") -> dict[str, Any]:
        """Return a kubeconfig (as a dict) for ``user`` against this server, CA included."""
        ca = base64.b64encode(self.ca_pem).decode()
        return {"apiVersion": "v1", "kind": "Config", "current-context": "twin",
                "clusters": [{"name": "twin", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
                "users": [{"name": user.name, "user": {"token": self.token_for(user)}}],
                "contexts": [{"name": "twin", "context": {"cluster": "twin", "user": user.name,
                                                          "namespace": namespace}}]}

    def service_account_files(self, namespace: str, name: str) -> dict[str, bytes]:
        """Return the files a pod of this ServiceAccount finds under /var/run/secrets/kubernetes.io/serviceaccount."""
        token = self.token_for(UserInfo.service_account(namespace, name))
        return {"token": token.encode(), "ca.crt": self.ca_pem, "namespace": namespace.encode()}

    def assert_all_modelled(self) -> None:
        """Fail (for a fixture's teardown) if any request was answered 501."""
        assert not self.unmodelled, "the twin was asked what it does not model:\n" + "\n".join(self.unmodelled)


def parse_path(path: str) -> Attributes | None:
    """Split a resource path into its attributes; None for a path that is not a resource request."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    attrs = Attributes(group, version, rest[0], namespace)
    if rest[0] == "namespaces" and len(rest) > 1:
        attrs.namespace = rest[1]
    attrs.name = rest[1] if len(rest) > 1 else ""
    attrs.subresource = rest[2] if len(rest) > 2 else ""
    attrs.rest = "/" + "/".join(rest[3:]) if len(rest) > 3 else ""
    if path.endswith("/") and attrs.subresource == "proxy":
        attrs.rest += "/"
    return attrs


def verb_of(method: str, attrs: Attributes, query: dict[str, str]) -> str:
    """Return the RBAC verb of a request, as the API server derives it."""
    watching = query.get("watch") in ("true", "1")
    if method in ("GET", "HEAD"):
        if attrs.subresource:
            return "get"
        return "watch" if watching else ("get" if attrs.name else "list")
    if method == "DELETE" and not attrs.name:
        return "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def twin(self) -> Twin:
        return self.server.twin

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._code = code

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def _handle(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._code, user, request = 0, None, None
        body = self._body()
        try:
            user = self._authenticate()
            if user is None:
                return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
            attrs = parse_path(url.path)
            if attrs is None:
                return self._non_resource(url.path)
            res = RESOURCES.get(attrs.resource)
            if res is None or res.group != attrs.group or res.version != attrs.version:
                raise Unmodelled(f"resource {attrs.group or 'core'}/{attrs.version} {attrs.resource}")
            if attrs.subresource and attrs.subresource not in res.subresources:
                raise Unmodelled(f"subresource {attrs.resource}/{attrs.subresource}")
            unknown = set(query) - _KNOWN_QUERY
            if unknown:
                raise Unmodelled(f"query parameters {sorted(unknown)}")
            request = Request(verb_of(self.command, attrs, query), attrs.resource, attrs.group, attrs.subresource,
                              attrs.namespace, attrs.name)
            if not self._authorized(user, request):
                return None
            from tests.twin.handlers import dispatch  # the verbs, apart from the plumbing
            dispatch(self, attrs, request, user, query, body)
        except Unmodelled as exc:
            self.twin.unmodelled.append(f"{self.command} {self.path}: {exc}")
            self._send(501, _status(501, "NotImplemented", f"the cluster twin does not model {exc} "
                                    f"({self.command} {url.path})"))
        except SelectorError as exc:
            self.twin.unmodelled.append(f"{self.command} {self.path}: {exc}")
            self._send(501, _status(501, "NotImplemented", str(exc)))
        except StoreError as exc:
            details = {"name": exc.name, "kind": exc.plural}
            if exc.plural in RESOURCES:
                details["group"] = RESOURCES[exc.plural].group
            self._send(exc.code, _status(exc.code, exc.reason, exc.message, details))
        finally:
            self.twin.requests.append(RequestRecord(user, request, self.command, url.path, self._code))

    def _authenticate(self) -> UserInfo | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        return self.twin.user_of(header.removeprefix("Bearer ").strip())

    def _authorized(self, user: UserInfo, request: Request) -> bool:
        if "system:masters" in user.groups:
            return True
        if rbac.authorize(self.twin.store.rbac_objects(), user, request).allowed:
            return True
        details = {"name": request.name, "group": request.group, "kind": request.resource}
        group = f".{request.group}" if request.group else ""
        named = f' "{request.name}"' if request.name else ""
        message = f"{request.resource}{group}{named} is forbidden: {rbac.forbidden_message(user, request)}"
        self._send(403, _status(403, "Forbidden", message, details))
        return False

    def _non_resource(self, path: str) -> None:
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "35", "gitVersion": "v1.35.0-eks-twin",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                       "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in GROUP_VERSIONS if g]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for group, version in GROUP_VERSIONS:
            prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
            if path.rstrip("/") == prefix:
                return self._send(200, _resource_list(group, version))
        raise Unmodelled(f"path {path}")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def _resource_list(group: str, version: str) -> dict[str, Any]:
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    found = []
    for res in RESOURCES.values():
        if (res.group, res.version) == (group, version):
            found.append({"name": res.plural, "singularName": res.kind.lower(), "namespaced": res.namespaced,
                          "kind": res.kind, "verbs": ["create"] if res.virtual else verbs})
            found += [{"name": f"{res.plural}/{s}", "singularName": "", "namespaced": res.namespaced,
                       "kind": res.kind, "verbs": ["get", "patch", "update"]} for s in res.subresources]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}".lstrip("/"),
            "resources": found}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    twin: Twin


@contextmanager
def serve(store: Store | None = None) -> Iterator[Twin]:
    """Run the twin's API server over HTTPS on 127.0.0.1 for the duration of the block."""
    twin = Twin(store or Store())
    ca, cert, key = _self_signed()
    twin.ca_pem = ca
    server = _Server(("127.0.0.1", free_port()), _Handler)
    with tempfile.TemporaryDirectory(prefix="twin-tls-") as tmp:
        (Path(tmp) / "tls.crt").write_bytes(cert)
        (Path(tmp) / "tls.key").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(Path(tmp) / "tls.crt", Path(tmp) / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.twin = twin
    twin.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="twin-api", daemon=True)
    thread.start()
    try:
        yield twin
    finally:
        server.shutdown()
        server.server_close()


__all__ = ["ADMIN", "Twin", "parse_path", "serve", "verb_of"]
