"""The RBAC in infra/ grants each identity exactly the requests of shipyard/kube/access.py, in both topologies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.kube import access
from tests.twin import helm
from tests.twin.rbac import Request, UserInfo, authorize, rules_for

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
# docs/cluster.md step 6: the releases and their values files.
RELEASES = (("prefect-server", "prefect-server", "prefect-server"),
            ("gpu-train-worker", "prefect-worker", "prefect-worker-gpu-train"),
            ("cpu-worker", "prefect-worker", "prefect-worker-cpu"))


def _documents(*paths: Path) -> list[dict[str, Any]]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def _helm_objects() -> list[dict[str, Any]]:
    return [o for release, chart, values in RELEASES
            for o in helm.install(release, chart, access.NAMESPACE, INFRA / "helm" / f"{values}.values.yaml")]


def cluster_rbac(topology: access.Topology, cluster: access.ClusterRole) -> list[dict[str, Any]]:
    """Return the RBAC objects of one cluster of a topology, as docs/cluster.md installs them."""
    if cluster == "training":
        unified = [INFRA / "k8s" / "unified" / "rollout-access.yaml"] if topology == "unified" else []
        objects = _documents(INFRA / "k8s" / "base.yaml", *unified) + _helm_objects()
    else:
        assert topology == "dedicated"
        objects = _documents(INFRA / "k8s" / "base.yaml", INFRA / "k8s" / "dedicated" / "inference-access.yaml")
    return [o for o in objects if o["kind"] in RBAC_KINDS]


def user(who: access.Identity) -> UserInfo:
    if who.kind == "ServiceAccount":
        return UserInfo.service_account(access.NAMESPACE, who.name)
    return UserInfo("arn:aws:iam::111122223333:role/shipyard-prefect-worker", (who.name, "system:authenticated"))


def granted(objects: list[dict[str, Any]], who: UserInfo) -> set[tuple[str, str, str]]:
    """Return every (verb, group, resource[/sub]) the bindings grant ``who`` in the namespace or cluster-wide."""
    found: set[tuple[str, str, str]] = set()
    for namespace in (access.NAMESPACE, ""):
        for where, rule in rules_for(objects, who, namespace):
            wide = [f for f in ("verbs", "apiGroups", "resources") if "*" in (rule.get(f) or [])]
            assert not wide, f"{where} grants '*' in {wide}: name the requests instead"
            assert not namespace or not rule.get("resourceNames"), f"{where}: resourceNames are not in the table"
            found |= {(v, g, r) for v in rule["verbs"] for g in rule["apiGroups"] for r in rule["resources"]}
    return found


def wanted(rows: tuple[access.Access, ...]) -> set[tuple[str, str, str]]:
    return {(row.verb, row.group, row.full_resource) for row in rows}


CASES = [(t, who) for t in ("unified", "dedicated") for who in access.identities(t)]  # type: ignore[arg-type]


@pytest.mark.parametrize(("topology", "who"), CASES, ids=[f"{t}-{w.cluster}-{w.name}" for t, w in CASES])
def test_each_identity_is_granted_exactly_its_rows(topology: access.Topology, who: access.Identity) -> None:
    objects = cluster_rbac(topology, who.cluster)
    rows = access.identities(topology)[who]
    for row in rows:
        request = Request(row.verb, row.resource, row.group, row.subresource, access.NAMESPACE)
        assert authorize(objects, user(who), request).allowed, f"{who.name} in {topology} lacks {row}"
    assert granted(objects, user(who)) == wanted(rows)


def test_dedicated_inference_cluster_grants_the_rollout_group_nothing_outside_its_namespace() -> None:
    objects = cluster_rbac("dedicated", "inference")
    who = user(access.identity("rollout", "dedicated"))
    assert authorize(objects, who, Request("create", "services", "", "proxy", access.NAMESPACE)).allowed
    assert not authorize(objects, who, Request("create", "services", "", "proxy", "default")).allowed
    assert not authorize(objects, who, Request("create", "jobs", "batch", "", access.NAMESPACE)).allowed


def test_the_worker_role_covers_no_pipeline_or_rollout_request() -> None:
    # The workers do not share the pipeline pod's identity: a worker token cannot roll the endpoint out.
    objects = cluster_rbac("unified", "training")
    worker = user(access.identity("worker", "unified"))
    for row in access.rows("rollout"):
        if (row.verb, row.group, row.full_resource) in wanted(access.rows("worker")):
            continue
        request = Request(row.verb, row.resource, row.group, row.subresource, access.NAMESPACE)
        assert not authorize(objects, worker, request).allowed, row


def test_the_table_names_the_requests_the_code_makes() -> None:
    rollout = wanted(access.rows("rollout"))
    assert ("create", "", "services/proxy") in rollout  # the smoke test POSTs through the service proxy
    assert ("delete", "apps", "deployments") in rollout  # a failed first rollout is deleted
    assert {("create", "batch", "jobs"), ("delete", "batch", "jobs")} <= wanted(access.rows("worker"))
    assert access.rows("node") == () and access.rows("inference") == ()
    with pytest.raises(ValueError, match="unknown component"):
        access.rows("scheduler")  # type: ignore[arg-type]
