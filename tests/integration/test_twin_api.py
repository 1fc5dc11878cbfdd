"""The twin's API server enforces what a real one does, seen through the real clients over HTTPS."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.authorization_v1 import SubjectAccessReview
from lightkube.resources.core_v1 import ConfigMap, Pod

from tests.servers import free_port
from tests.twin import api
from tests.twin.rbac import UserInfo

NS = "shipyard"
RBAC = "rbac.authorization.k8s.io/v1"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "v1.35"}


def _role(name: str, ns: str, rules: list[dict[str, Any]], sa: str) -> list[dict[str, Any]]:
    return [{"apiVersion": RBAC, "kind": "Role", "metadata": {"name": name, "namespace": ns}, "rules": rules},
            {"apiVersion": RBAC, "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
             "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NS}],
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}}]


@pytest.fixture
def twin() -> Iterator[api.Twin]:
    with api.serve() as running:
        running.store.apply_manifests([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": RESTRICTED}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lenient", "labels": {
                "pod-security.kubernetes.io/enforce": "baseline"}}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "pipeline", "namespace": NS}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": NS}},
            *_role("pipeline", NS, [{"apiGroups": [""], "resources": ["pods", "configmaps"],
                                     "verbs": ["get", "list", "create"]},
                                    {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get"]},
                                    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create"]}],
                   "pipeline"),
        ])
        yield running


def _client(twin: api.Twin, user: UserInfo, namespace: str = NS) -> Client:
    return Client(KubeConfig.from_dict(twin.kubeconfig(user, namespace)), field_manager="test")


PIPELINE = UserInfo.service_account(NS, "pipeline")
BARE_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]}}


def test_a_missing_verb_is_refused_with_the_api_servers_message(twin: api.Twin) -> None:
    client = _client(twin, PIPELINE)
    assert list(client.list(ConfigMap)) == []
    with pytest.raises(ApiError) as refused:
        client.delete(ConfigMap, "x")
    assert refused.value.status.code == 403
    assert refused.value.status.message == ('configmaps "x" is forbidden: User "system:serviceaccount:shipyard:'
                                            'pipeline" cannot delete resource "configmaps" in API group "" in the '
                                            'namespace "shipyard"')
    assert refused.value.status.details.kind == "configmaps"
    assert (PIPELINE, "delete", 403) in [(r.user, r.request.verb if r.request else None, r.status)
                                         for r in twin.requests]


def test_a_service_account_without_a_binding_is_refused_and_no_token_is_401(twin: api.Twin) -> None:
    with pytest.raises(ApiError) as refused:
        list(_client(twin, UserInfo.service_account(NS, "nobody")).list(Pod))
    assert refused.value.status.code == 403
    assert httpx.get(f"{twin.url}/api/v1/namespaces/{NS}/pods", verify=False).status_code == 401
    with pytest.raises(KeyError):
        twin.token_for(UserInfo.service_account(NS, "ghost"))


def test_a_rolebinding_grants_only_its_namespace(twin: api.Twin) -> None:
    assert list(_client(twin, PIPELINE).list(Pod, namespace=NS)) == []
    with pytest.raises(ApiError) as refused:
        list(_client(twin, PIPELINE).list(Pod, namespace="other"))
    assert 'in the namespace "other"' in refused.value.status.message


def test_the_service_proxy_needs_create_for_post_and_reaches_the_endpoint(twin: api.Twin) -> None:
    backend = _backend()
    twin.store.put("services", {"metadata": {"name": "web", "namespace": NS},
                                "spec": {"ports": [{"name": "http", "port": 80}]}})
    twin.store.put("endpoints", {"metadata": {"name": "web", "namespace": NS}, "subsets": [
        {"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": backend}]}]})
    headers = {"Authorization": f"Bearer {twin.token_for(PIPELINE)}"}
    url = f"{twin.url}/api/v1/namespaces/{NS}/services/web:http/proxy/ping"
    got = httpx.get(url, headers=headers, verify=False)
    assert (got.status_code, got.text) == (200, "GET /ping")
    posted = httpx.post(url, headers=headers, verify=False, content=b"{}")
    assert posted.status_code == 403
    assert 'cannot create resource "services/proxy"' in posted.json()["message"]


def _backend() -> int:
    class Echo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = f"GET {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return port


def test_server_side_apply_needs_patch_and_conflicts_between_managers(twin: api.Twin) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": NS},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}}}
    with pytest.raises(ApiError) as refused:
        _client(twin, PIPELINE).apply(from_dict(deployment), field_manager="shipyard")
    assert 'cannot patch resource "deployments" in API group "apps"' in refused.value.status.message
    admin = _client(twin, api.ADMIN)
    admin.apply(from_dict(deployment), field_manager="shipyard")
    deployment["spec"]["replicas"] = 3
    with pytest.raises(ApiError) as clash:
        admin.apply(from_dict(deployment), field_manager="kubectl")
    assert clash.value.status.code == 409
    assert clash.value.status.message == ('Apply failed with 1 conflict: conflict with "shipyard" using apps/v1: '
                                          '.spec.replicas')
    forced = admin.apply(from_dict(deployment), field_manager="kubectl", force=True)
    assert forced.spec.replicas == 3 and forced.metadata.generation == 2


def test_pod_security_refuses_a_bare_pod_in_restricted_and_admits_it_in_baseline(twin: api.Twin) -> None:
    admin = _client(twin, api.ADMIN)
    with pytest.raises(ApiError) as refused:
        admin.create(from_dict(BARE_POD), namespace=NS)
    assert refused.value.status.code == 403
    assert refused.value.status.message.startswith(
        'pods "bare" is forbidden: violates PodSecurity "restricted:v1.35": allowPrivilegeEscalation != false '
        '(container "main" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities')
    assert admin.create(from_dict(BARE_POD), namespace="lenient").metadata.name == "bare"


def test_a_pod_naming_a_missing_service_account_is_refused(twin: api.Twin) -> None:
    pod = {**BARE_POD, "spec": {**BARE_POD["spec"], "serviceAccountName": "ghost"}}
    with pytest.raises(ApiError) as refused:
        _client(twin, api.ADMIN).create(from_dict(pod), namespace="lenient")
    assert refused.value.status.message == ('pods "bare" is forbidden: error looking up service account '
                                            'lenient/ghost: serviceaccount "ghost" not found')


def test_dry_run_stores_nothing(twin: api.Twin) -> None:
    headers = {"Authorization": f"Bearer {twin.token_for(api.ADMIN)}"}
    got = httpx.post(f"{twin.url}/api/v1/namespaces/lenient/pods?dryRun=All", json=BARE_POD, headers=headers,
                     verify=False)
    assert got.status_code == 201
    assert twin.store.get("pods", "lenient", "bare") is None


def test_an_unmodelled_request_is_501_and_recorded(twin: api.Twin) -> None:
    headers = {"Authorization": f"Bearer {twin.token_for(api.ADMIN)}"}
    got = httpx.get(f"{twin.url}/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses", headers=headers, verify=False)
    assert got.status_code == 501
    assert "networking.k8s.io/v1 ingresses" in got.json()["message"]
    with pytest.raises(AssertionError, match="ingresses"):
        twin.assert_all_modelled()
    twin.unmodelled.clear()


def test_a_subject_access_review_answers_like_the_authorizer(twin: api.Twin) -> None:
    def review(verb: str) -> bool:
        sar = SubjectAccessReview.from_dict({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                                             "spec": {"user": PIPELINE.name, "groups": list(PIPELINE.groups),
                                                      "resourceAttributes": {"namespace": NS, "verb": verb,
                                                                             "resource": "pods"}}})
        answer = _client(twin, api.ADMIN).create(sar)
        return bool(answer.status.allowed)

    assert review("list") is True
    assert review("delete") is False
    with pytest.raises(ApiError):
        _client(twin, PIPELINE).create(SubjectAccessReview.from_dict({"spec": {"user": "x", "resourceAttributes": {}}}))


def test_kubernetes_asyncio_lists_pods_with_kubeconfig_and_in_cluster_files(twin: api.Twin, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes_asyncio import client, config

    async def names(configuration: client.Configuration) -> list[str]:
        async with client.ApiClient(configuration) as http:
            pods = await client.CoreV1Api(http).list_namespaced_pod(NS)
            return [p.metadata.name for p in pods.items]

    with_kubeconfig = client.Configuration()
    asyncio.run(config.load_kube_config_from_dict(twin.kubeconfig(PIPELINE, NS),
                                                  client_configuration=with_kubeconfig))
    assert asyncio.run(names(with_kubeconfig)) == []
    for name, data in twin.service_account_files(NS, "pipeline").items():
        (tmp_path / name).write_bytes(data)
    port = twin.url.rsplit(":", 1)[1]
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    in_cluster = client.Configuration()
    config.load_incluster_config(client_configuration=in_cluster, token_filename=str(tmp_path / "token"),
                                 cert_filename=str(tmp_path / "ca.crt"))
    assert asyncio.run(names(in_cluster)) == []
