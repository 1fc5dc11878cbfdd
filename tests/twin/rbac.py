"""Kubernetes RBAC as the API server evaluates it (interface pinned; evaluation to be filled in).

``authorize`` answers whether ``user`` may make ``request`` given the RBAC objects (Role, ClusterRole,
RoleBinding, ClusterRoleBinding dicts, the API's JSON) in the cluster; ``forbidden_message`` is the body
message of the API server's 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


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


def authorize(objects: Iterable[dict[str, Any]], user: UserInfo, request: Request) -> Decision:
    """Return whether the RBAC objects allow ``user`` to make ``request``."""
    raise NotImplementedError


def forbidden_message(user: UserInfo, request: Request) -> str:
    """Return the API server's 403 message for a request RBAC refused."""
    raise NotImplementedError


__all__ = ["Decision", "Request", "UserInfo", "authorize", "forbidden_message", "field"]
