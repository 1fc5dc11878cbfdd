"""The resource table the twin serves: plural -> group, version, kind, scope, subresources.

Label and field selectors as the API server parses them live here too (``selected``), since the store (lists,
watches) and the controllers (Service selectors) both use them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Resource:
    plural: str
    group: str  # "" for core
    version: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    virtual: bool = False  # create-only reviews, never stored

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


_ALL = [
    Resource("namespaces", "", "v1", "Namespace", False, ("status",)),
    Resource("pods", "", "v1", "Pod", True, ("log", "status", "proxy")),
    Resource("services", "", "v1", "Service", True, ("status", "proxy")),
    Resource("endpoints", "", "v1", "Endpoints"),
    Resource("events", "", "v1", "Event"),
    Resource("secrets", "", "v1", "Secret"),
    Resource("configmaps", "", "v1", "ConfigMap"),
    Resource("serviceaccounts", "", "v1", "ServiceAccount"),
    Resource("nodes", "", "v1", "Node", False, ("status",)),
    Resource("jobs", "batch", "v1", "Job", True, ("status",)),
    Resource("deployments", "apps", "v1", "Deployment", True, ("status", "scale")),
    Resource("replicasets", "apps", "v1", "ReplicaSet", True, ("status", "scale")),
    Resource("statefulsets", "apps", "v1", "StatefulSet", True, ("status", "scale")),
    Resource("daemonsets", "apps", "v1", "DaemonSet", True, ("status",)),
    Resource("poddisruptionbudgets", "policy", "v1", "PodDisruptionBudget", True, ("status",)),
    Resource("roles", "rbac.authorization.k8s.io", "v1", "Role"),
    Resource("rolebindings", "rbac.authorization.k8s.io", "v1", "RoleBinding"),
    Resource("clusterroles", "rbac.authorization.k8s.io", "v1", "ClusterRole", False),
    Resource("clusterrolebindings", "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", False),
    Resource("priorityclasses", "scheduling.k8s.io", "v1", "PriorityClass", False),
    Resource("selfsubjectaccessreviews", "authorization.k8s.io", "v1", "SelfSubjectAccessReview", False, (), True),
    Resource("subjectaccessreviews", "authorization.k8s.io", "v1", "SubjectAccessReview", False, (), True),
    Resource("storageclasses", "storage.k8s.io", "v1", "StorageClass", False),
    Resource("persistentvolumeclaims", "", "v1", "PersistentVolumeClaim", True, ("status",)),
    Resource("nodepools", "karpenter.sh", "v1", "NodePool", False, ("status",)),
    Resource("nodeclaims", "karpenter.sh", "v1", "NodeClaim", False, ("status",)),
    Resource("ec2nodeclasses", "karpenter.k8s.aws", "v1", "EC2NodeClass", False, ("status",)),
]
RESOURCES: dict[str, Resource] = {r.plural: r for r in _ALL}
BY_KIND: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in _ALL}
GROUP_VERSIONS = sorted({(r.group, r.version) for r in _ALL})

# Field selectors each resource supports (besides metadata.name and metadata.namespace), as the API server has them.
FIELDS: dict[str, set[str]] = {
    "pods": {"spec.nodeName", "status.phase", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "status.podIP", "status.nominatedNodeName"},
    "events": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
               "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
               "reportingComponent", "source", "type"},
    "jobs": {"status.successful"}, "secrets": {"type"}, "nodes": {"spec.unschedulable"},
    "replicasets": {"status.replicas"},
}


class SelectorError(ValueError):
    """A selector the twin does not parse (a real API server would, or would answer 400)."""


_TERM = re.compile(r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
                   r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$")


def _terms(selector: str) -> list[str]:
    """Split on the commas that are not inside ``( )``."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    return [t for t in [*terms, current] if t.strip()]


def label_matcher(selector: str | None) -> list[tuple[str, str, set[str]]]:
    """Parse a label selector into (key, op, values) with op one of =, !=, in, notin, exists, !exists."""
    parsed = []
    for term in _terms(selector or ""):
        m = _TERM.match(term)
        if m is None or (m["neg"] and (m["op"] or m["setop"])):
            raise SelectorError(f"label selector term {term!r} is not modelled")
        if m["setop"]:
            parsed.append((m["key"], m["setop"], {v.strip() for v in m["values"].split(",") if v.strip()}))
        elif m["op"]:
            parsed.append((m["key"], "!=" if m["op"] == "!=" else "=", {m["value"]}))
        else:
            parsed.append((m["key"], "!exists" if m["neg"] else "exists", set()))
    return parsed


def field_matcher(plural: str, selector: str | None) -> list[tuple[str, str, str]]:
    """Parse a field selector into (field, op, value); a field the resource does not support is an error."""
    parsed = []
    for term in _terms(selector or ""):
        m = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if m is None:
            raise SelectorError(f"field selector term {term!r} is not modelled")
        if m[1] not in {"metadata.name", "metadata.namespace"} | FIELDS.get(plural, set()):
            raise SelectorError(f'field label not supported: {m[1]} (on {plural})')
        parsed.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))
    return parsed


def _field(obj: dict[str, Any], dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def selected(obj: dict[str, Any], labels: list[tuple[str, str, set[str]]], fields: list[tuple[str, str, str]]) -> bool:
    """Return whether an object matches parsed label and field selectors."""
    have = obj.get("metadata", {}).get("labels") or {}
    for key, op, values in labels:
        ok = {"=": key in have and have[key] in values, "!=": have.get(key) not in values,
              "in": key in have and have[key] in values, "notin": have.get(key) not in values,
              "exists": key in have, "!exists": key not in have}[op]
        if not ok:
            return False
    return all((_field(obj, f) == v) == (op == "=") for f, op, v in fields)
