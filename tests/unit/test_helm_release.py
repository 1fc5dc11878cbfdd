"""The Helm releases of docs/cluster.md step 6 install side by side, as the Prefect charts name their objects."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from tests.twin import helm

HELM = Path(__file__).resolve().parents[2] / "infra" / "helm"
RELEASES = (
    ("prefect-server", "prefect-server", "prefect-server"),
    ("gpu-train-worker", "prefect-worker", "prefect-worker-gpu-train"),
    ("cpu-worker", "prefect-worker", "prefect-worker-cpu"),
)


def test_the_charts_default_names_would_collide() -> None:
    # The reported defect: without a fullnameOverride per release both workers render "prefect-worker" objects,
    # so the second `helm install` is refused and one work pool has no worker.
    names = [
        (o["kind"], o["metadata"]["name"])
        for release in ("gpu-train-worker", "cpu-worker")
        for o in helm.render_worker(
            release,
            "shipyard",
            {
                "worker": {
                    "apiConfig": "selfHostedServer",
                    "selfHostedServerApiConfig": {"apiUrl": "x"},
                    "config": {"workPool": release},
                }
            },
        )
    ]
    assert ("Deployment", "prefect-worker") in names and names.count(("Deployment", "prefect-worker")) == 2


def test_fullname_follows_the_common_chart() -> None:
    assert helm.fullname("prefect-worker", "cpu", {}) == "cpu-prefect-worker"
    assert helm.fullname("prefect-worker", "my-prefect-worker", {}) == "my-prefect-worker"
    assert helm.fullname("prefect-worker", "x" * 70, {}) == "x" * 63
    assert helm.fullname("prefect-worker", "cpu", {"fullnameOverride": "w"}) == "w"


def test_no_two_releases_in_the_namespace_render_the_same_object() -> None:
    objects = [
        o
        for release, chart, values in RELEASES
        for o in helm.install(release, chart, "shipyard", HELM / f"{values}.values.yaml")
    ]
    counts = Counter((o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects)
    assert [key for key, n in counts.items() if n > 1] == []


def test_the_workers_run_as_their_own_account_with_the_values_pod_spec() -> None:
    for release, values in (("gpu-train-worker", "prefect-worker-gpu-train"), ("cpu-worker", "prefect-worker-cpu")):
        given = yaml.safe_load((HELM / f"{values}.values.yaml").read_text())
        objects = helm.install(release, "prefect-worker", "shipyard", HELM / f"{values}.values.yaml")
        assert {o["kind"] for o in objects} == {"Deployment"}  # RBAC and account come from infra/k8s/base.yaml
        spec = objects[0]["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == "shipyard-worker"
        assert spec["nodeSelector"] == given["worker"]["nodeSelector"]
        assert spec["securityContext"] == given["worker"]["podSecurityContext"]
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == "shipyard"  # the Role is namespaced
        assert (
            spec["containers"][0]["args"][spec["containers"][0]["args"].index("--pool") + 1]
            == given["worker"]["config"]["workPool"]
        )


def test_the_server_service_is_the_name_the_workers_call() -> None:
    objects = helm.install("prefect-server", "prefect-server", "shipyard", HELM / "prefect-server.values.yaml")
    service = next(o for o in objects if o["kind"] == "Service")
    for values in ("prefect-worker-gpu-train", "prefect-worker-cpu"):
        url = yaml.safe_load((HELM / f"{values}.values.yaml").read_text())["worker"]["selfHostedServerApiConfig"]
        assert url["apiUrl"].startswith(f"http://{service['metadata']['name']}.shipyard.svc.cluster.local:4200/")
