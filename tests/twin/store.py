"""The twin's object store: every object the cluster holds, its history, and the writes the API server makes.

Objects are plain dicts (the API's JSON) keyed by ``(plural, namespace, name)``; cluster-scoped objects have
namespace ``""``. Thread-safe: every read and write holds ``store.lock`` (a Condition, notified on each change).

Interface (other twin parts build on it):

    Store(admit_pod=None)                      admit_pod(namespace, pod) -> None | Forbidden message; default:
                                               ServiceAccount admission + Pod Security (``default_admission``)
    put(plural, obj) -> dict                   create or replace as a controller/kubelet does (no admission)
    get(plural, namespace, name) -> dict|None
    remove(plural, namespace, name, cascade=True) -> dict|None   dependents by ownerReferences go too
    listing(plural, namespace, labels, fields) -> List dict      namespace None: all namespaces
    create(plural, obj, as_user=None, dry_run=False) -> dict      API create: namespace must exist, pods are
                                               admitted; raises ``Forbidden`` (``.message``), ``AlreadyExists``...
    update(plural, obj, dry_run=False) -> dict                   API replace, optimistic lock on resourceVersion
    apply(plural, namespace, name, body, manager, force=False, dry_run=False) -> dict   server-side apply
    merge_patch(plural, namespace, name, patch, strategic=False, manager=None, dry_run=False) -> dict
    set_status(plural, namespace, name, status) -> dict           a controller's status write
    stream(plural, namespace, labels, fields, since, timeout) -> Iterator[watch event]
    append_log(namespace, pod, container, text) / end_log(namespace, pod, container)
    read_log(namespace, pod, container, follow=False, tail_lines=None, timeout=300.0) -> Iterator[str]
    apply_manifests(docs) -> list[dict]        ``kubectl apply -f`` as a cluster admin (no RBAC, with admission)
    rbac_objects() -> list[dict]               the Roles, ClusterRoles and bindings, for rbac.authorize
    requests: list[RequestRecord]              every API request (user, attributes, HTTP status), in order

All raised errors are ``StoreError`` subclasses carrying ``code``, ``reason`` and the API server's ``message``.
"""

from __future__ import annotations

import copy
import datetime
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.twin import podsecurity
from tests.twin.rbac import Request, UserInfo
from tests.twin.resources import RESOURCES, field_matcher, label_matcher, selected
from tests.twin.ssa import Owners, conflicts_message, leaves, merge, remove_path

AdmitPod = Callable[[str, dict[str, Any]], str | None]


class StoreError(Exception):
    """A write the API server refuses: the HTTP code, the Status reason and its message."""

    code = 500
    reason = "InternalError"

    def __init__(self, message: str, plural: str = "", name: str = "") -> None:
        super().__init__(message)
        self.message, self.plural, self.name = message, plural, name


class NotFound(StoreError):
    code, reason = 404, "NotFound"


class AlreadyExists(StoreError):
    code, reason = 409, "AlreadyExists"


class Conflict(StoreError):
    code, reason = 409, "Conflict"


class Forbidden(StoreError):
    """Refused by admission (Pod Security, ServiceAccount) or RBAC; ``message`` is the API server's."""

    code, reason = 403, "Forbidden"


class Invalid(StoreError):
    code, reason = 422, "Invalid"


@dataclass(frozen=True)
class RequestRecord:
    """One API request: who made it, its RBAC attributes (None for discovery and other non-resource URLs)."""

    user: UserInfo | None
    request: Request | None
    method: str
    path: str
    status: int


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def not_found(plural: str, name: str) -> NotFound:
    return NotFound(f'{plural}{_group_suffix(plural)} "{name}" not found', plural, name)


def _group_suffix(plural: str) -> str:
    group = RESOURCES[plural].group if plural in RESOURCES else ""
    return f".{group}" if group else ""


def _key(plural: str, obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return plural, meta.get("namespace", "") if RESOURCES[plural].namespaced else "", meta["name"]


def _bootstrap_rbac() -> list[dict[str, Any]]:
    """What every cluster has: cluster-admin for system:masters, discovery and self-reviews for everyone."""
    rbac = "rbac.authorization.k8s.io/v1"
    basic = [{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews",
                                                                   "selfsubjectrulesreviews"], "verbs": ["create"]}]
    roles = {"cluster-admin": ([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], "system:masters"),
             "system:basic-user": (basic, "system:authenticated")}
    docs = []
    for name, (rules, group) in roles.items():
        docs.append({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})
        docs.append({"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": name},
                     "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": group}],
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}})
    return docs


class Store:
    """The objects and the history of changes; thread-safe."""

    def __init__(self, admit_pod: AdmitPod | None = None) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.changes: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, type, plural, object)
        self.requests: list[RequestRecord] = []
        self.version = 0
        self.lock = threading.Condition(threading.RLock())
        self.admit_pod: AdmitPod = admit_pod or self.default_admission
        self.owners: dict[tuple[str, str, str], Owners] = {}
        self.logs: dict[tuple[str, str, str], list[str]] = {}
        self.ended: set[tuple[str, str, str]] = set()
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.put("namespaces", {"metadata": {"name": ns}})
        for doc in _bootstrap_rbac():
            self.put(BY_KIND_PLURAL[doc["kind"]], doc)

    # -- raw reads and writes (controllers, kubelet) -------------------------------------------------------

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object, as a controller would; no admission. Returns the stored object."""
        res = RESOURCES[plural]
        meta = obj.setdefault("metadata", {})
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        if res.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = _key(plural, obj)
        with self.lock:
            old = self.objects.get(key)
            if old is None:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now())
                if "spec" in obj or "template" in obj:
                    meta.setdefault("generation", 1)
            else:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"].get("creationTimestamp", now())
                generation = int(old["metadata"].get("generation", 1 if "spec" in old else 0))
                meta["generation"] = generation + 1 if old.get("spec") != obj.get("spec") else generation
                if not meta["generation"]:
                    meta.pop("generation")
            self._record("MODIFIED" if old is not None else "ADDED", plural, obj)
            self.objects[key] = obj
            if plural == "namespaces" and old is None:
                self._namespace_added(meta["name"])
            return obj

    def _namespace_added(self, namespace: str) -> None:
        """The ServiceAccount controller gives every new namespace its ``default`` ServiceAccount."""
        if ("serviceaccounts", namespace, "default") not in self.objects:
            self.put("serviceaccounts", {"metadata": {"name": "default", "namespace": namespace}})

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Return an object (the stored dict itself; copy before changing it), or None."""
        with self.lock:
            return self.objects.get((plural, namespace if RESOURCES[plural].namespaced else "", name))

    def remove(self, plural: str, namespace: str, name: str, cascade: bool = True) -> dict[str, Any] | None:
        """Delete an object and, with cascade, its dependents by ownerReferences (the garbage collector)."""
        with self.lock:
            obj = self.objects.pop((plural, namespace if RESOURCES[plural].namespaced else "", name), None)
            if obj is None:
                return None
            self.owners.pop((plural, namespace, name), None)
            self._record("DELETED", plural, obj)
            if cascade:
                uid = obj["metadata"]["uid"]
                for key in [k for k, o in self.objects.items()
                            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", []))]:
                    self.remove(*key, cascade=True)
            if plural == "namespaces":
                for key in [k for k in self.objects if k[1] == name and RESOURCES[k[0]].namespaced]:
                    self.remove(*key, cascade=False)
            return obj

    def set_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Replace an object's status, as its controller or the kubelet does."""
        with self.lock:
            obj = self.get(plural, namespace, name)
            if obj is None:
                raise not_found(plural, name)
            return self.put(plural, {**copy.deepcopy(obj), "status": status})

    def _record(self, change: str, plural: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.changes.append((self.version, change, plural, copy.deepcopy(obj)))
        self.lock.notify_all()

    def listing(self, plural: str, namespace: str | None, labels: str | None = None,
                fields: str | None = None) -> dict[str, Any]:
        """Return the List of matching objects (namespace None: every namespace) at the current version."""
        res, by_label, by_field = RESOURCES[plural], label_matcher(labels), field_matcher(plural, fields)
        with self.lock:
            items = [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items()) if p == plural
                     and (namespace is None or ns == namespace) and selected(o, by_label, by_field)]
            version = str(self.version)
        return {"apiVersion": res.api_version, "kind": f"{res.kind}List", "metadata": {"resourceVersion": version},
                "items": items}

    def rbac_objects(self) -> list[dict[str, Any]]:
        """Return every Role, ClusterRole, RoleBinding and ClusterRoleBinding."""
        with self.lock:
            return [o for (p, _, _), o in self.objects.items()
                    if p in ("roles", "clusterroles", "rolebindings", "clusterrolebindings")]

    def stream(self, plural: str, namespace: str | None, labels: str | None, fields: str | None, since: str,
               timeout: float) -> Iterator[dict[str, Any]]:
        """Yield watch events as the API server sends them until ``timeout`` seconds pass.

        ``since`` "" or "0": ADDED for every current object first, then changes; else changes after it.
        """
        by_label, by_field = label_matcher(labels), field_matcher(plural, fields)

        def wanted(p: str, obj: dict[str, Any]) -> bool:
            ns = obj["metadata"].get("namespace", "")
            return p == plural and (namespace is None or ns == namespace) and selected(obj, by_label, by_field)

        with self.lock:
            if since in ("", "0"):
                seen = self.version
                initial = [copy.deepcopy(o) for (p, _, _), o in sorted(self.objects.items()) if wanted(p, o)]
            else:
                seen, initial = int(since), []
        for obj in initial:
            yield {"type": "ADDED", "object": obj}
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                fresh = [c for c in self.changes if c[0] > seen]
                if not fresh:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self.lock.wait(min(remaining, 0.5))
                    continue
            for rv, change, p, obj in fresh:
                seen = rv
                if wanted(p, obj):
                    yield {"type": change, "object": obj}

    # -- API writes -----------------------------------------------------------------------------------------

    def _check_namespace(self, plural: str, namespace: str) -> None:
        if RESOURCES[plural].namespaced and self.get("namespaces", "", namespace) is None:
            raise NotFound(f'namespaces "{namespace}" not found', "namespaces", namespace)

    def _admit(self, plural: str, namespace: str, obj: dict[str, Any]) -> None:
        if plural == "pods":
            message = self.admit_pod(namespace, obj)
            if message is not None:
                raise Forbidden(message, plural, obj["metadata"].get("name", ""))

    def create(self, plural: str, obj: dict[str, Any], as_user: UserInfo | None = None,
               dry_run: bool = False) -> dict[str, Any]:
        """Create an object as the API server does: the namespace must exist, pods pass admission.

        ``as_user`` (a controller's identity) records the request in ``requests``. Raises ``Forbidden`` with the
        admission message, ``AlreadyExists``, ``NotFound`` (no such namespace).
        """
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace", "default") if RESOURCES[plural].namespaced else ""
        if "name" not in meta and "generateName" in meta:
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if not meta.get("name"):
            raise Invalid(f"{RESOURCES[plural].kind} \"\" is invalid: metadata.name: Required value", plural)
        request = Request("create", plural, RESOURCES[plural].group, "", namespace)
        try:
            with self.lock:
                self._check_namespace(plural, namespace)
                if self.get(plural, namespace, meta["name"]) is not None:
                    raise AlreadyExists(f'{plural}{_group_suffix(plural)} "{meta["name"]}" already exists', plural,
                                        meta["name"])
                for field in ("resourceVersion", "uid", "creationTimestamp", "generation"):
                    meta.pop(field, None)
                self._admit(plural, namespace, obj)
                stored = copy.deepcopy(obj) if dry_run else copy.deepcopy(self.put(plural, obj))
        except StoreError as exc:
            self._note(as_user, request, plural, exc.code)
            raise
        self._note(as_user, request, plural, 201)
        return stored

    def _note(self, user: UserInfo | None, request: Request, plural: str, status: int) -> None:
        if user is not None:
            path = f"{RESOURCES[plural].prefix}/namespaces/{request.namespace}/{plural}"
            self.requests.append(RequestRecord(user, request, "POST", path, status))

    def _current(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        current = self.get(plural, namespace, name)
        if current is None:
            raise not_found(plural, name)
        return current

    def update(self, plural: str, obj: dict[str, Any], dry_run: bool = False, manager: str | None = None,
               subresource: str = "") -> dict[str, Any]:
        """Replace an object (PUT); a stale ``metadata.resourceVersion`` is a Conflict."""
        obj = copy.deepcopy(obj)
        key = _key(plural, obj)
        with self.lock:
            current = self._current(*key)
            wanted = obj["metadata"].get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise Conflict(_modified(plural, key[2]), plural, key[2])
            if subresource == "status":
                obj = {**copy.deepcopy(current), "status": obj.get("status", {})}
            elif plural not in ("configmaps", "secrets", "serviceaccounts") and "status" in current:
                obj["status"] = copy.deepcopy(current["status"])
            if manager:
                self._owners(key).take(manager, leaves(obj), "Update")
            self._admit(plural, key[1], obj)
            return copy.deepcopy(obj) if dry_run else copy.deepcopy(self.put(plural, self._stamp(key, obj)))

    def _owners(self, key: tuple[str, str, str]) -> Owners:
        return self.owners.setdefault(key, Owners())

    def _stamp(self, key: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        if key in self.owners:
            obj["metadata"]["managedFields"] = self.owners[key].entries(obj.get("apiVersion", ""))
        return obj

    def apply(self, plural: str, namespace: str, name: str, body: dict[str, Any], manager: str,
              force: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply: ``manager`` owns the fields it sets; another owner's field with another value is a
        Conflict unless ``force``; fields it no longer sets (and nobody else owns) are removed."""
        res = RESOURCES[plural]
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise Invalid(f'the name of the object ({meta["name"]}) does not match the name on the URL ({name})')
        meta["name"] = name
        if res.namespaced:
            meta["namespace"] = namespace
        key = (plural, namespace if res.namespaced else "", name)
        with self.lock:
            self._check_namespace(plural, namespace)
            current = self.get(*key)
            wanted = meta.pop("resourceVersion", None)
            if wanted and (current is None or wanted != current["metadata"]["resourceVersion"]):
                raise Conflict(_modified(plural, name), plural, name)
            applied = leaves(body)
            owners = copy.deepcopy(self.owners.get(key)) or Owners()
            base = copy.deepcopy(current) if current else {}
            clashes = owners.conflicts(manager, applied, base)
            if clashes and not force:
                raise Conflict(conflicts_message(clashes, body.get("apiVersion", res.api_version)), plural, name)
            dropped = owners.take(manager, applied, "Apply", force=force)
            result = merge(base, body)
            for path in dropped:
                remove_path(result, path)
            if current is None:
                result["metadata"].pop("managedFields", None)
                self._admit(plural, namespace, result)
            elif plural == "pods":
                self._admit(plural, namespace, result)
            if dry_run:
                return result
            self.owners[key] = owners
            return copy.deepcopy(self.put(plural, self._stamp(key, result)))

    def merge_patch(self, plural: str, namespace: str, name: str, patch: dict[str, Any], strategic: bool = False,
                    manager: str | None = None, dry_run: bool = False, subresource: str = "") -> dict[str, Any]:
        """JSON merge patch (RFC 7386), or strategic merge patch where lists of named items merge by name."""
        key = (plural, namespace if RESOURCES[plural].namespaced else "", name)
        with self.lock:
            current = copy.deepcopy(self._current(*key))
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise Conflict(_modified(plural, name), plural, name)
            if subresource == "status":
                patch = {"status": patch.get("status", {})}
            result = merge(current, patch, strategic=strategic)
            if manager:
                self._owners(key).take(manager, leaves(patch), "Update")
            if plural == "pods":
                self._admit(plural, namespace, result)
            return result if dry_run else copy.deepcopy(self.put(plural, self._stamp(key, result)))

    def delete(self, plural: str, namespace: str, name: str, propagation: str = "Background",
               dry_run: bool = False) -> dict[str, Any]:
        """Delete as the API does: NotFound if absent; Orphan leaves dependents."""
        with self.lock:
            current = self._current(plural, namespace, name)
            if dry_run:
                return copy.deepcopy(current)
            removed = self.remove(plural, namespace, name, cascade=propagation != "Orphan")
            assert removed is not None
            if propagation == "Orphan":  # the orphan finalizer: dependents lose the reference, so the GC keeps them
                uid = removed["metadata"]["uid"]
                for key, obj in list(self.objects.items()):
                    refs = obj["metadata"].get("ownerReferences") or []
                    if any(r.get("uid") == uid for r in refs):
                        kept = [r for r in refs if r.get("uid") != uid]
                        changed = {**copy.deepcopy(obj), "metadata": {**copy.deepcopy(obj["metadata"]),
                                                                      "ownerReferences": kept}}
                        if not kept:
                            changed["metadata"].pop("ownerReferences")
                        self.put(key[0], changed)
            return removed

    # -- logs ---------------------------------------------------------------------------------------------

    def append_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        """Add what a container wrote to its stdout/stderr (the kubelet calls this)."""
        with self.lock:
            self.logs.setdefault((namespace, pod, container), []).append(text)
            self.lock.notify_all()

    def end_log(self, namespace: str, pod: str, container: str) -> None:
        """Mark a container's log finished (it exited): ``follow`` readers stop."""
        with self.lock:
            self.ended.add((namespace, pod, container))
            self.lock.notify_all()

    def read_log(self, namespace: str, pod: str, container: str, follow: bool = False,
                 tail_lines: int | None = None, timeout: float = 300.0) -> Iterator[str]:
        """Yield a container's log; with ``follow``, until it ends, the pod goes or ``timeout`` passes."""
        key = (namespace, pod, container)
        with self.lock:
            chunks = list(self.logs.get(key, []))
        text = "".join(chunks)
        if tail_lines is not None:
            text = "".join(text.splitlines(keepends=True)[-tail_lines:]) if tail_lines else ""
        if text:
            yield text
        sent, deadline = len(chunks), time.monotonic() + timeout
        while follow:
            with self.lock:
                chunks = self.logs.get(key, [])
                if len(chunks) == sent:
                    gone = self.get("pods", namespace, pod) is None
                    if key in self.ended or gone or time.monotonic() > deadline:
                        return
                    self.lock.wait(0.5)
                    continue
                fresh, sent = chunks[sent:], len(chunks)
            yield "".join(fresh)

    # -- admission ----------------------------------------------------------------------------------------

    def default_admission(self, namespace: str, pod: dict[str, Any]) -> str | None:
        """The ServiceAccount plugin (defaults ``default``; the account must exist), then Pod Security."""
        spec = pod.setdefault("spec", {})
        account = spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        name = pod["metadata"].get("name", "")
        if self.get("serviceaccounts", namespace, account) is None:
            return (f'pods "{name}" is forbidden: error looking up service account {namespace}/{account}: '
                    f'serviceaccount "{account}" not found')
        ns = self.get("namespaces", "", namespace) or {}
        return podsecurity.admission_message(ns.get("metadata", {}).get("labels") or {}, pod)

    # -- kubectl apply -f ------------------------------------------------------------------------------------

    def apply_manifests(self, docs: Iterable[dict[str, Any]], manager: str = "kubectl") -> list[dict[str, Any]]:
        """Create or update each document as ``kubectl apply --server-side`` by a cluster admin would."""
        applied = []
        for doc in docs:
            if not doc:
                continue
            plural = plural_of(doc)
            meta = doc.get("metadata", {})
            namespace = meta.get("namespace", "default") if RESOURCES[plural].namespaced else ""
            applied.append(self.apply(plural, namespace, meta["name"], doc, manager, force=True))
        return applied


BY_KIND_PLURAL = {r.kind: r.plural for r in RESOURCES.values()}


def plural_of(doc: dict[str, Any]) -> str:
    """Return the resource plural of a manifest; an unmodelled kind is an error naming it."""
    for res in RESOURCES.values():
        if res.kind == doc.get("kind") and res.api_version == doc.get("apiVersion"):
            return res.plural
    raise KeyError(f"the twin does not model {doc.get('apiVersion')} {doc.get('kind')}")


def _modified(plural: str, name: str) -> str:
    return (f'Operation cannot be fulfilled on {plural}{_group_suffix(plural)} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again")
