"""Kubernetes RBAC as the API server evaluates it.

``authorize`` answers whether ``user`` may make ``request`` given the RBAC objects (Role, ClusterRole,
RoleBinding, ClusterRoleBinding dicts, the API's JSON) in the cluster; ``forbidden_message`` is the body
message of the API server's 403.

The evaluation follows kubernetes' plugin/pkg/auth/authorizer/rbac (``VisitRulesFor`` and the rule matchers
of pkg/apis/rbac/v1/evaluation_helpers.go): ClusterRoleBindings apply everywhere, RoleBindings only in their
own namespace (to a Role of that namespace or a ClusterRole), a ServiceAccount subject without a namespace
means the binding's namespace, and a rule matches on apiGroups, resources (``*``, ``res/sub`` and ``*/sub``),
verbs and resourceNames. Aggregated ClusterRoles (``aggregationRule``) take the rules of the ClusterRoles their
selectors match, as the clusterrole-aggregation controller writes them. RBAC only allows; nothing denies.

Of the default ClusterRoles the API server ships, only ``system:basic-user`` is modelled
(:func:`bootstrap_objects`: SelfSubjectAccessReview/RulesReview for every authenticated user), because the
preflight's self-checks depend on it; ``system:discovery`` covers non-resource URLs, which this module does
not evaluate (the twin serves discovery to everyone authenticated, as that role allows).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class UserInfo:
    """Who makes a request: a ServiceAccount is ``system:serviceaccount:<ns>:<name>`` with its groups."""

    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def service_account(cls, namespace: str, name: str) -> UserInfo:
        """Return the identity of a ServiceAccount's token, with the groups the API server gives it."""
        return cls(f"system:serviceaccount:{namespace}:{name}",
                   ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


@dataclass(frozen=True)
class Request:
    """The authorization attributes of one API request (resource requests only; no non-resource URLs)."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    resource: str  # plural, e.g. "pods"
    group: str = ""  # API group, "" for core
    subresource: str = ""  # e.g. "log", "proxy", "status"
    namespace: str = ""  # "" for cluster-scoped requests
    name: str = ""  # the object's name, when the request names one


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""  # which binding allowed it, or why nothing did


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


def _applies_to(subject: dict[str, Any], user: UserInfo, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name", "")
    if kind == "User":
        return bool(user.name == name)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


def _cluster_role_rules(roles: dict[str, dict[str, Any]], name: str) -> list[dict[str, Any]] | None:
    role = roles.get(name)
    if role is None:
        return None
    aggregation = role.get("aggregationRule")
    if not aggregation:
        return list(role.get("rules") or [])
    rules: list[dict[str, Any]] = []
    for selector in aggregation.get("clusterRoleSelectors") or []:
        wanted = selector.get("matchLabels") or {}
        for other_name, other in sorted(roles.items()):
            labels = _meta(other).get("labels") or {}
            if other_name != name and wanted and all(labels.get(k) == v for k, v in wanted.items()):
                rules.extend(other.get("rules") or [])
    return rules


def rules_for(objects: Iterable[dict[str, Any]], user: UserInfo,
              namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (binding, rule) for every rule that applies to ``user`` in ``namespace`` ("" cluster scope)."""
    objs = list(objects)
    cluster_roles = {_meta(o).get("name", ""): o for o in objs if o.get("kind") == "ClusterRole"}
    roles = {(_meta(o).get("namespace", ""), _meta(o).get("name", "")): o for o in objs if o.get("kind") == "Role"}
    for binding in objs:
        kind, meta = binding.get("kind"), _meta(binding)
        if kind == "ClusterRoleBinding":
            binding_namespace = ""
        elif kind == "RoleBinding" and namespace and meta.get("namespace") == namespace:
            binding_namespace = namespace
        else:
            continue
        if not any(_applies_to(s, user, binding_namespace) for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        if ref.get("apiGroup", RBAC_GROUP) != RBAC_GROUP:
            continue
        if ref.get("kind") == "ClusterRole":
            rules = _cluster_role_rules(cluster_roles, ref.get("name", ""))
        elif ref.get("kind") == "Role" and kind == "RoleBinding":
            role = roles.get((binding_namespace, ref.get("name", "")))
            rules = list(role.get("rules") or []) if role is not None else None
        else:
            rules = None
        where = f"{kind} {meta.get('namespace', '') + '/' if binding_namespace else ''}{meta.get('name', '')}"
        for rule in rules or []:
            yield where, rule


def _resource_matches(rule_resources: list[str], resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for ruled in rule_resources:
        if ruled == "*" or ruled == combined:
            return True
        if subresource and ruled == f"*/{subresource}":
            return True
    return False


def rule_allows(rule: dict[str, Any], request: Request) -> bool:
    """Tell whether one PolicyRule covers the resource request, as RuleAllows does."""
    verbs, groups = rule.get("verbs") or [], rule.get("apiGroups") or []
    names = rule.get("resourceNames") or []
    return ("*" in verbs or request.verb in verbs) \
        and ("*" in groups or request.group in groups) \
        and _resource_matches(list(rule.get("resources") or []), request.resource, request.subresource) \
        and (not names or request.name in names)


def authorize(objects: Iterable[dict[str, Any]], user: UserInfo, request: Request) -> Decision:
    """Return whether the RBAC objects allow ``user`` to make ``request``."""
    for where, rule in rules_for(objects, user, request.namespace):
        if rule_allows(rule, request):
            return Decision(True, f'RBAC: allowed by {where}')
    return Decision(False, "")


def forbidden_message(user: UserInfo, request: Request) -> str:
    """Return the API server's 403 message for a request RBAC refused (responsewriters.forbiddenMessage)."""
    resource = f"{request.resource}/{request.subresource}" if request.subresource else request.resource
    head = f'User "{user.name}" cannot {request.verb} resource "{resource}" in API group "{request.group}"'
    if request.namespace:
        return f'{head} in the namespace "{request.namespace}"'
    return f"{head} at the cluster scope"


def bootstrap_objects() -> list[dict[str, Any]]:
    """Return the API server's default ``system:basic-user`` ClusterRole and its binding."""
    return [
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole", "metadata": {"name": "system:basic-user"},
         "rules": [{"apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                   {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"],
                    "verbs": ["create"]}]},
        {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:basic-user"},
         "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": "system:authenticated"}],
         "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "system:basic-user"}},
    ]


__all__ = ["Decision", "Request", "UserInfo", "authorize", "bootstrap_objects", "field", "forbidden_message",
           "rule_allows", "rules_for"]
