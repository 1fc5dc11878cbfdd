"""The API server's verbs over the store, once a request is authenticated and authorized (tests/twin/api.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from tests.twin import rbac
from tests.twin.rbac import Request, UserInfo
from tests.twin.resources import RESOURCES
from tests.twin.store import Invalid, NotFound, not_found

if TYPE_CHECKING:
    from tests.twin.api import Attributes, _Handler


def dispatch(h: _Handler, attrs: Attributes, request: Request, user: UserInfo, query: dict[str, str],
             body: bytes) -> None:
    """Answer one authorized resource request."""
    from tests.twin.api import Unmodelled

    store, verb, sub = h.twin.store, request.verb, attrs.subresource
    dry = query.get("dryRun") == "All"
    ns = attrs.namespace if RESOURCES[attrs.resource].namespaced else ""
    if sub == "proxy":
        return _proxy(h, attrs, body, query)
    if sub == "log":
        return _log(h, attrs, query)
    if attrs.resource in ("selfsubjectaccessreviews", "subjectaccessreviews"):
        if verb != "create":
            raise Unmodelled(f"{verb} {attrs.resource}")
        return h._send(201, _review(h, attrs.resource, json.loads(body or b"{}"), user))
    if verb == "get":
        obj = store.get(attrs.resource, ns, attrs.name)
        if obj is None:
            raise not_found(attrs.resource, attrs.name)
        return h._send(200, obj)
    if verb in ("list", "watch"):
        namespace = attrs.namespace if attrs.namespace or not RESOURCES[attrs.resource].namespaced else None
        if RESOURCES[attrs.resource].namespaced is False:
            namespace = ""
        if verb == "watch":
            return _watch(h, attrs.resource, namespace, query)
        listing = store.listing(attrs.resource, namespace, query.get("labelSelector"), query.get("fieldSelector"))
        return h._send(200, _page(listing, query))
    if verb == "create" and not sub:
        obj = json.loads(body or b"{}")
        if RESOURCES[attrs.resource].namespaced:
            obj.setdefault("metadata", {})["namespace"] = attrs.namespace
        return h._send(201, store.create(attrs.resource, obj, dry_run=dry))
    if verb == "update":
        obj = json.loads(body or b"{}")
        if obj.get("metadata", {}).get("name") != attrs.name:
            raise Invalid("the name of the object does not match the name on the URL", attrs.resource, attrs.name)
        if RESOURCES[attrs.resource].namespaced:
            obj["metadata"]["namespace"] = attrs.namespace
        return h._send(200, store.update(attrs.resource, obj, dry, query.get("fieldManager"), sub))
    if verb == "patch":
        return _patch(h, attrs, ns, query, body, dry)
    if verb == "delete" and not sub:
        options = json.loads(body) if body else {}
        policy = options.get("propagationPolicy") or query.get("propagationPolicy", "Background")
        store.delete(attrs.resource, ns, attrs.name, policy, dry_run=dry)
        return h._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": attrs.name, "kind": attrs.resource}})
    raise Unmodelled(f"verb {verb} on {attrs.resource}{'/' + sub if sub else ''}")


def _patch(h: _Handler, attrs: Attributes, ns: str, query: dict[str, str], body: bytes, dry: bool) -> None:
    from tests.twin.api import Unmodelled

    store, kind = h.twin.store, (h.headers.get("Content-Type") or "").split(";")[0].strip()
    manager = query.get("fieldManager")
    if kind == "application/apply-patch+yaml":
        if not manager:
            raise Invalid("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required "
                          "for apply patch", attrs.resource, attrs.name)
        if attrs.subresource:
            raise Unmodelled(f"server-side apply to {attrs.resource}/{attrs.subresource}")
        patch = yaml.safe_load(body or b"{}") or {}
        return h._send(200, store.apply(attrs.resource, ns, attrs.name, patch, manager,
                                        query.get("force") == "true", dry))
    if kind not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        raise Unmodelled(f"patch type {kind or '(none)'}")
    patch = json.loads(body or b"{}")
    if "$patch" in json.dumps(patch) or "$setElementOrder" in json.dumps(patch):
        raise Unmodelled("strategic merge patch directives")
    h._send(200, store.merge_patch(attrs.resource, ns, attrs.name, patch, kind.startswith("application/strategic"),
                                   manager, dry, attrs.subresource))


def _page(listing: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    """Apply ``limit``/``continue`` (the token is the offset)."""
    limit = int(query.get("limit") or 0)
    start = int(query.get("continue") or 0)
    items = listing["items"][start:]
    if limit and len(items) > limit:
        listing["metadata"]["continue"] = str(start + limit)
        listing["metadata"]["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    listing["items"] = items
    return listing


def _watch(h: _Handler, plural: str, namespace: str | None, query: dict[str, str]) -> None:
    events = h.twin.store.stream(plural, namespace, query.get("labelSelector"), query.get("fieldSelector"),
                                 query.get("resourceVersion", ""), float(query.get("timeoutSeconds", "1800")))
    first = next(events, None)  # selector errors surface before the 200
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Connection", "close")
    h.end_headers()
    h._code = 200
    h.close_connection = True
    try:
        if first is not None:
            h.wfile.write(json.dumps(first).encode() + b"\n")
            h.wfile.flush()
        for event in events:
            h.wfile.write(json.dumps(event).encode() + b"\n")
            h.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        return


def _log(h: _Handler, attrs: Attributes, query: dict[str, str]) -> None:
    store = h.twin.store
    pod = store.get("pods", attrs.namespace, attrs.name)
    if pod is None:
        raise not_found("pods", attrs.name)
    names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
    container = query.get("container") or (names[0] if len(names) == 1 else "")
    if container not in names + [c["name"] for c in pod.get("spec", {}).get("initContainers", [])]:
        raise Invalid(f"a container name must be specified for pod {attrs.name}, choose one of: {names}"
                      if not container else f"container {container} is not valid for pod {attrs.name}")
    tail = int(query["tailLines"]) if "tailLines" in query else None
    chunks = store.read_log(attrs.namespace, attrs.name, container, query.get("follow") == "true", tail)
    if query.get("follow") != "true":
        return h._send(200, "".join(chunks).encode(), "text/plain")
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Connection", "close")
    h.end_headers()
    h._code, h.close_connection = 200, True
    for chunk in chunks:
        h.wfile.write(chunk.encode())
        h.wfile.flush()


def _target(h: _Handler, attrs: Attributes) -> tuple[str, int]:
    """Return the pod IP and port a services/proxy or pods/proxy request goes to."""
    store = h.twin.store
    name, _, port = attrs.name.partition(":")
    if attrs.resource == "pods":
        pod = store.get("pods", attrs.namespace, name)
        if pod is None:
            raise not_found("pods", name)
        ports = [p for c in pod["spec"].get("containers", []) for p in c.get("ports", [])]
        number = next((p["containerPort"] for p in ports if p.get("name") == port), None) or int(port or 80)
        return pod.get("status", {}).get("podIP", ""), number
    svc = store.get("services", attrs.namespace, name)
    if svc is None:
        raise not_found("services", name)
    svc_ports = svc.get("spec", {}).get("ports", [])
    chosen = next((p for p in svc_ports if port in (p.get("name"), str(p.get("port")))), None) if port else (
        svc_ports[0] if svc_ports else None)
    endpoints = store.get("endpoints", attrs.namespace, name) or {}
    for subset in endpoints.get("subsets", []):
        eps = subset.get("ports", [])
        ep = next((p for p in eps if chosen is None or p.get("name") == chosen.get("name") or len(eps) == 1), None)
        if subset.get("addresses") and ep is not None:
            return subset["addresses"][0]["ip"], int(ep["port"])
    raise _Unavailable(f'no endpoints available for service "{name}"')


class _Unavailable(NotFound):
    code, reason = 503, "ServiceUnavailable"


def _proxy(h: _Handler, attrs: Attributes, body: bytes, query: dict[str, str]) -> None:
    ip, port = _target(h, attrs)
    path = attrs.rest or "/"
    headers = {k: v for k, v in h.headers.items() if k.lower() not in ("authorization", "host", "content-length",
                                                                          "connection", "accept-encoding")}
    try:
        resp = httpx.request(h.command, f"http://{ip}:{port}{path}", params=query, content=body, headers=headers,
                             timeout=60.0)
    except httpx.HTTPError as exc:
        h._send(503, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 503,
                      "reason": "ServiceUnavailable", "message": f"error trying to reach service: {exc}"})
        return
    h._send(resp.status_code, resp.content, resp.headers.get("content-type", "application/octet-stream"))


def _review(h: _Handler, plural: str, review: dict[str, Any], user: UserInfo) -> dict[str, Any]:
    """Answer a (Self)SubjectAccessReview with the same authorizer the API server uses."""
    from tests.twin.api import Unmodelled

    spec = review.get("spec", {})
    attrs = spec.get("resourceAttributes")
    if attrs is None:
        raise Unmodelled("non-resource attributes in an access review")
    who = user if plural == "selfsubjectaccessreviews" else UserInfo(spec.get("user", ""),
                                                                       tuple(spec.get("groups", [])))
    request = Request(attrs.get("verb", ""), attrs.get("resource", ""), attrs.get("group", ""),
                      attrs.get("subresource", ""), attrs.get("namespace", ""), attrs.get("name", ""))
    if "system:masters" in who.groups:
        status = {"allowed": True, "reason": "system:masters"}
    else:
        decision = rbac.authorize(h.twin.store.rbac_objects(), who, request)
        status = {"allowed": decision.allowed, "reason": decision.reason} if decision.allowed else {
            "allowed": False, **({"reason": decision.reason} if decision.reason else {})}
    return {**review, "apiVersion": "authorization.k8s.io/v1", "kind": RESOURCES[plural].kind,
            "metadata": {"creationTimestamp": None}, "status": status}
