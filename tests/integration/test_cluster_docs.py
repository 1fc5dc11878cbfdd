"""docs/cluster.md followed step by step against twin clusters, then ``shipyard cluster check`` and ``deploy cluster``.

Both topologies. The walker (tests/twin/docwalk.py) turns each doc command into the objects it creates; the
controllers and scheduler place every pod the doc's manifests and Helm releases make. Then the CLI runs as a user
would after step 7's exports, against the twin API servers (HTTPS, RBAC, admission) and a real Prefect server.

Two things stand in for what the twin cannot run yet (it has no kubelet): MLflow's Endpoints point at a real
MLflow server process (the pod the doc's Deployment would run), and each Helm worker's start is what
``prefect worker start --pool P`` does first (create its pool, heartbeat), sent to the Prefect server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from shipyard.cli import main
from tests.twin.api import Twin, serve
from tests.twin.docwalk import Walk, kubeconfig_contexts, walk


def _worker_pools(walk_: Walk) -> list[str]:
    """Return the work pool each Helm worker Deployment polls (its ``--pool`` argument)."""
    pools = []
    for deployment in walk_.store().listing("deployments", "shipyard")["items"]:
        args = deployment["spec"]["template"]["spec"]["containers"][0].get("args") or []
        if "--pool" in args:
            pools.append(args[args.index("--pool") + 1])
    return pools


def _start_workers(pools: list[str]) -> None:
    """Do what each worker does when it starts: make its pool if missing, then heartbeat."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for pool in pools:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="kubernetes"))
            client.send_worker_heartbeat(pool, f"{pool}-worker-0", heartbeat_interval_seconds=30)


def _mlflow_endpoint(walk_: Walk, mlflow_url: str) -> None:
    """Give MLflow's Service the endpoint its pod would have: the real tracking server."""
    parsed = urlparse(mlflow_url)
    walk_.store("shipyard-train" if "shipyard-train" in walk_.contexts else None).put("endpoints", {
        "metadata": {"name": "mlflow", "namespace": "shipyard"},
        "subsets": [{"addresses": [{"ip": parsed.hostname}], "ports": [{"name": "http", "port": parsed.port}]}]})


@contextlib.contextmanager
def _running(walk_: Walk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Twin]]:
    """Serve each cluster of the walk; write the user's kubeconfig (and the inference one the doc makes)."""
    with contextlib.ExitStack() as stack:
        twins = {name: stack.enter_context(serve(store)) for name, store in walk_.clusters.items()}
        configs = {name: twin.kubeconfig(twin.admin) for name, twin in twins.items()}
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(kubeconfig_contexts(walk_, configs)))
        if "SHIPYARD_INFERENCE_KUBECONFIG" in walk_.env:  # `aws eks update-kubeconfig --alias shipyard-inference`
            inference = dict(configs["shipyard-inference"])
            inference["contexts"] = [{**inference["contexts"][0], "name": "shipyard-inference"}]
            inference["current-context"] = "shipyard-inference"
            Path(walk_.env["SHIPYARD_INFERENCE_KUBECONFIG"]).write_text(yaml.safe_dump(inference))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        for name, value in walk_.env.items():
            if name.startswith("SHIPYARD_"):
                monkeypatch.setenv(name, value)
        yield twins


@pytest.fixture
def cluster_env(prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Step 7's port-forward to the Prefect API: here, the test server."""
    monkeypatch.setenv("SHIPYARD_PREFECT_API_URL", prefect_api)
    for name in [n for n in os.environ if n.startswith("SHIPYARD_") and n != "SHIPYARD_PREFECT_API_URL"]:
        monkeypatch.delenv(name)
    return prefect_api


def _check(capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["cluster", "check"])
    out = capsys.readouterr().out
    return code, out.splitlines()


@pytest.mark.parametrize("topology", ["unified", "dedicated"])
def test_the_documented_cluster_passes_the_check_and_takes_the_deployments(
        topology: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        cluster_env: str, mlflow_server: str) -> None:
    documented = walk(topology, str(tmp_path))
    assert [argv for _, argv in documented.shipyard] == [("shipyard", "cluster", "check"),
                                                          ("shipyard", "deploy", "cluster")]
    _mlflow_endpoint(documented, mlflow_server)
    with _running(documented, tmp_path, monkeypatch) as twins:
        _start_workers(_worker_pools(documented))
        code, lines = _check(capsys)
        assert code == 0, "\n".join(lines)
        assert lines[-1].startswith(f"cluster check passed ({topology} topology)")
        assert main(["deploy", "cluster"]) == 0
        for twin in twins.values():
            twin.assert_all_modelled()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("pipeline-flow/cluster")
    env: dict[str, Any] = deployment.job_variables["env"]
    assert env["SHIPYARD_ROLLOUT_TARGET"] == "kubernetes" and env["SHIPYARD_TRAIN_MODE"] == "cluster"
    if topology == "dedicated":
        assert env["SHIPYARD_INFERENCE_KUBECONFIG"] == "/etc/shipyard/inference/config"
        assert env["SHIPYARD_INFERENCE_MLFLOW_TRACKING_URI"].endswith(".elb.us-west-2.amazonaws.com:5000")


def _problems(topology: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
              mlflow_server: str, break_it: Any, workers: bool = True) -> list[str]:
    documented = walk(topology, str(tmp_path))
    _mlflow_endpoint(documented, mlflow_server)
    break_it(documented)
    with _running(documented, tmp_path, monkeypatch):
        if workers:
            _start_workers(_worker_pools(documented))
        code, lines = _check(capsys)
    assert code == 1, "\n".join(lines)
    return [line for line in lines if line.startswith("[")]


def _drop_rule(resource: str, role: str, cluster: str | None = None) -> Any:
    def broken(documented: Walk) -> None:
        store = documented.store(cluster)
        obj = store.get("roles", "shipyard", role)
        obj["rules"] = [r for r in obj["rules"] if resource not in r["resources"]]
        store.put("roles", obj)
    return broken


def test_a_missing_rule_is_named_with_its_role_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], cluster_env: str,
                                                      mlflow_server: str) -> None:
    lines = _problems("dedicated", tmp_path, monkeypatch, capsys, mlflow_server,
                      _drop_rule("services/proxy", "shipyard-rollout", "shipyard-inference"))
    assert ['[access] Group shipyard-rollout in shipyard-inference: rollout cannot create services/proxy '
                     'in namespace shipyard; fix: add the rule {apiGroups: [""], resources: ["services/proxy"], '
                     'verbs: ["create"]} to Role shipyard-rollout and bind it to shipyard-rollout '
                     '(infra/k8s/base.yaml)'][0] in lines


def test_pods_the_namespace_would_refuse_are_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], cluster_env: str,
                                                   mlflow_server: str) -> None:
    def lower_and_drop_sa(documented: Walk) -> None:
        store = documented.store()
        store.remove("serviceaccounts", "shipyard", "shipyard-inference")

    lines = _problems("unified", tmp_path, monkeypatch, capsys, mlflow_server, lower_and_drop_sa)
    refused = [line for line in lines if line.startswith("[pod-security] inference pod (shipyard/kube/inference.py)")]
    assert len(refused) == 1 and 'serviceaccount "shipyard-inference" not found' in refused[0]


def test_missing_gpu_capacity_and_autoscaling_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], cluster_env: str,
                                                       mlflow_server: str) -> None:
    def no_plugin_no_pool(documented: Walk) -> None:
        store = documented.store()
        store.remove("nodepools", "", "train")
        for ds in store.listing("daemonsets", "kube-system")["items"]:
            store.remove("daemonsets", "kube-system", ds["metadata"]["name"])

    lines = _problems("unified", tmp_path, monkeypatch, capsys, mlflow_server, no_plugin_no_pool)
    joined = "\n".join(lines)
    assert "[nodes] pod of work pool gpu-train" in joined and "no node and no Karpenter NodePool" in joined
    assert "[nodes] multi-node training pod" in joined
    assert "[nodes] inference pod" in joined and "kubectl apply -f infra/k8s/nvidia-device-plugin.yaml" in joined


def test_no_room_for_the_surge_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], cluster_env: str,
                                         mlflow_server: str) -> None:
    def one_inference_node(documented: Walk) -> None:
        store = documented.store("shipyard-inference")
        nodes = [n for n in store.listing("nodes", "")["items"] if n["metadata"]["labels"].get("role") == "inference"]
        for node in nodes[1:]:
            store.remove("nodes", "", node["metadata"]["name"])

    lines = _problems("dedicated", tmp_path, monkeypatch, capsys, mlflow_server, one_inference_node)
    room = [line for line in lines if line.startswith("[room] inference pod")]
    assert len(room) == 1 and "hold 1 such pod(s)" in room[0] and "replicas 2 + maxSurge 1 = 3" in room[0]


def test_no_mlflow_and_unpinned_images_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], cluster_env: str,
                                                          mlflow_server: str) -> None:
    def no_mlflow(documented: Walk) -> None:
        documented.store().remove("endpoints", "shipyard", "mlflow")
        documented.env["SHIPYARD_IMAGE"] = "shipyard:latest"

    lines = _problems("unified", tmp_path, monkeypatch, capsys, mlflow_server, no_mlflow, workers=False)
    joined = "\n".join(lines)
    assert "[mlflow] service shipyard/mlflow:5000" in joined
    assert "[images] image shipyard:latest: names no registry" in joined
