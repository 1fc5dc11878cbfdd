"""The twin's RBAC refuses what Kubernetes' RBAC authorizer refuses, and says so in the API server's words."""

from __future__ import annotations

from typing import Any

from tests.twin.rbac import Request, UserInfo, authorize, bootstrap_objects, forbidden_message

G = "rbac.authorization.k8s.io"
WORKER = UserInfo.service_account("shipyard", "prefect-worker")


def role(name: str, *rules: dict[str, Any], namespace: str = "shipyard", cluster: bool = False) -> dict[str, Any]:
    meta = {"name": name} if cluster else {"name": name, "namespace": namespace}
    return {"kind": "ClusterRole" if cluster else "Role", "metadata": meta, "rules": list(rules)}


def rule(verbs: str, groups: str, resources: str, names: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "verbs": verbs.split(),
        "apiGroups": [g if g != "core" else "" for g in groups.split()],
        "resources": resources.split(),
    }
    if names:
        out["resourceNames"] = names.split()
    return out


def binding(
    name: str, ref_kind: str, ref: str, *subjects: dict[str, Any], namespace: str | None = "shipyard"
) -> dict[str, Any]:
    meta = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {
        "kind": "ClusterRoleBinding" if namespace is None else "RoleBinding",
        "metadata": meta,
        "subjects": list(subjects),
        "roleRef": {"apiGroup": G, "kind": ref_kind, "name": ref},
    }


def sa(name: str, namespace: str | None = "shipyard") -> dict[str, Any]:
    return {"kind": "ServiceAccount", "name": name, **({"namespace": namespace} if namespace else {})}


def allowed(objects: list[dict[str, Any]], request: Request, user: UserInfo = WORKER) -> bool:
    return authorize(objects, user, request).allowed


def test_the_forbidden_message_is_the_api_servers() -> None:
    request = Request("create", "services", "", "proxy", "shipyard")
    assert forbidden_message(WORKER, request) == (
        'User "system:serviceaccount:shipyard:prefect-worker" cannot create '
        'resource "services/proxy" in API group "" in the namespace "shipyard"'
    )
    assert forbidden_message(WORKER, Request("list", "nodes")) == (
        'User "system:serviceaccount:shipyard:prefect-worker" cannot list resource "nodes" in API group "" '
        "at the cluster scope"
    )


def test_a_resource_does_not_grant_its_subresources() -> None:
    objects = [role("r", rule("create get", "core", "services pods")), binding("b", "Role", "r", sa("prefect-worker"))]
    assert allowed(objects, Request("create", "services", namespace="shipyard"))
    assert not allowed(objects, Request("create", "services", subresource="proxy", namespace="shipyard"))
    assert not allowed(objects, Request("get", "pods", subresource="log", namespace="shipyard"))


def test_star_slash_subresource_matches_only_that_subresource() -> None:
    objects = [role("r", rule("get", "core", "*/log")), binding("b", "Role", "r", sa("prefect-worker"))]
    assert allowed(objects, Request("get", "pods", subresource="log", namespace="shipyard"))
    assert not allowed(objects, Request("get", "pods", namespace="shipyard"))
    assert not allowed(objects, Request("get", "pods", subresource="status", namespace="shipyard"))


def test_verbs_groups_and_names_must_all_match() -> None:
    objects = [
        role("r", rule("get", "apps", "deployments", names="shipyard-inference")),
        binding("b", "Role", "r", sa("prefect-worker")),
    ]
    assert allowed(objects, Request("get", "deployments", "apps", namespace="shipyard", name="shipyard-inference"))
    assert not allowed(objects, Request("get", "deployments", "apps", namespace="shipyard", name="other"))
    assert not allowed(objects, Request("list", "deployments", "apps", namespace="shipyard"))  # no name: refused
    assert not allowed(objects, Request("get", "deployments", "", namespace="shipyard", name="shipyard-inference"))
    assert not allowed(
        objects, Request("patch", "deployments", "apps", namespace="shipyard", name="shipyard-inference")
    )


def test_a_rolebinding_is_limited_to_its_namespace_even_to_a_clusterrole() -> None:
    objects = [
        role("view", rule("*", "*", "*"), cluster=True),
        binding("b", "ClusterRole", "view", sa("prefect-worker")),
    ]
    assert allowed(objects, Request("delete", "jobs", "batch", namespace="shipyard"))
    assert not allowed(objects, Request("delete", "jobs", "batch", namespace="default"))
    assert not allowed(objects, Request("list", "nodes"))  # cluster scope


def test_a_role_in_another_namespace_grants_nothing() -> None:
    objects = [
        role("r", rule("get", "core", "pods"), namespace="other"),
        binding("b", "Role", "r", sa("prefect-worker")),
    ]
    assert not allowed(objects, Request("get", "pods", namespace="shipyard"))


def test_a_clusterrolebinding_applies_everywhere() -> None:
    objects = [
        role("c", rule("list", "core", "nodes pods"), cluster=True),
        binding("b", "ClusterRole", "c", sa("prefect-worker"), namespace=None),
    ]
    assert allowed(objects, Request("list", "nodes")) and allowed(objects, Request("list", "pods", namespace="x"))


def test_subjects_user_group_and_service_account_namespace_defaulting() -> None:
    objects = [
        role("r", rule("get", "core", "pods")),
        binding("b", "Role", "r", sa("prefect-worker", namespace=None)),
    ]  # defaults to the binding's namespace
    assert allowed(objects, Request("get", "pods", namespace="shipyard"))
    assert not allowed(
        objects, Request("get", "pods", namespace="shipyard"), UserInfo.service_account("other", "prefect-worker")
    )
    by_group = [
        role("r", rule("get", "core", "pods")),
        binding("b", "Role", "r", {"kind": "Group", "name": "shipyard-rollout", "apiGroup": G}),
    ]
    assert allowed(by_group, Request("get", "pods", namespace="shipyard"), UserInfo("arn:x", ("shipyard-rollout",)))
    assert not allowed(by_group, Request("get", "pods", namespace="shipyard"), UserInfo("shipyard-rollout"))
    by_user = [role("r", rule("get", "core", "pods")), binding("b", "Role", "r", {"kind": "User", "name": "alice"})]
    assert allowed(by_user, Request("get", "pods", namespace="shipyard"), UserInfo("alice"))
    assert not allowed(by_user, Request("get", "pods", namespace="shipyard"), UserInfo("bob", ("alice",)))
    # all service accounts of a namespace, by their group
    by_sa_group = [
        role("r", rule("get", "core", "pods")),
        binding("b", "Role", "r", {"kind": "Group", "name": "system:serviceaccounts:shipyard", "apiGroup": G}),
    ]
    assert allowed(by_sa_group, Request("get", "pods", namespace="shipyard"))


def test_a_binding_to_a_missing_role_grants_nothing() -> None:
    assert not allowed(
        [binding("b", "Role", "gone", sa("prefect-worker"))], Request("get", "pods", namespace="shipyard")
    )


def test_an_aggregated_clusterrole_takes_the_rules_of_the_roles_it_selects() -> None:
    aggregate = {
        "kind": "ClusterRole",
        "metadata": {"name": "agg"},
        "rules": [],
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"shipyard.dev/aggregate": "true"}}]},
    }
    part = role("part", rule("list", "batch", "jobs"), cluster=True)
    part["metadata"]["labels"] = {"shipyard.dev/aggregate": "true"}
    other = role("other", rule("delete", "batch", "jobs"), cluster=True)
    objects = [aggregate, part, other, binding("b", "ClusterRole", "agg", sa("prefect-worker"))]
    assert allowed(objects, Request("list", "jobs", "batch", namespace="shipyard"))
    assert not allowed(objects, Request("delete", "jobs", "batch", namespace="shipyard"))


def test_basic_user_lets_every_authenticated_user_review_itself_only() -> None:
    objects = bootstrap_objects()
    review = Request("create", "selfsubjectaccessreviews", "authorization.k8s.io")
    assert allowed(objects, review)
    assert not allowed(objects, review, UserInfo("system:anonymous", ("system:unauthenticated",)))
    assert not allowed(objects, Request("create", "subjectaccessreviews", "authorization.k8s.io"))
