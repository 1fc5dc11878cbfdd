"""Pods meet the restricted Pod Security profile the shipyard namespace enforces.

``restricted_violations`` (tests/twin/podsecurity.py) checks a pod spec against the rules of the Kubernetes
Pod Security Standards (baseline and restricted, as of Kubernetes 1.35) the way the PodSecurity admission
controller does: what the API server would refuse to create in the namespace. The rendered training and
pipeline Jobs, every workload under infra/k8s/ and the Prefect workers' Helm values go through it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import INFRA, REPO, kubernetes_manifests, load_all, pod_specs
from tests.twin.podsecurity import restricted_violations
from tests.unit.test_kube_job_template import TYPICAL, render


def _pipeline_job(values: dict[str, Any]) -> dict[str, Any]:
    return render(values, template="pipeline")


RENDERED = {"gpu-train defaults": lambda: render({}), "gpu-train typical": lambda: render(TYPICAL),
            "pipeline defaults": lambda: _pipeline_job({})}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_the_rendered_jobs_meet_the_restricted_profile(name: str) -> None:
    job = RENDERED[name]()
    assert restricted_violations(job["spec"]["template"]["spec"]) == []


def _workloads() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in kubernetes_manifests():
        for document in load_all(path):
            if document["metadata"].get("namespace") == "kube-system":  # node agents: see the device plugin test
                continue
            for pod in pod_specs(document):
                found.append((f"{path.relative_to(INFRA)}:{document['kind']}/{document['metadata']['name']}", pod))
    return found


@pytest.mark.parametrize("name, pod", _workloads(), ids=[n for n, _ in _workloads()])
def test_every_workload_under_infra_meets_the_restricted_profile(name: str, pod: dict[str, Any]) -> None:
    assert restricted_violations(pod) == []


def test_the_device_plugin_departs_from_the_restricted_profile_only_as_a_node_agent_must() -> None:
    # kube-system enforces no Pod Security level; the plugin writes its socket into the kubelet's directory.
    plugin = load_all(INFRA / "k8s" / "nvidia-device-plugin.yaml")[0]
    assert plugin["metadata"]["namespace"] == "kube-system"
    volumes = plugin["spec"]["template"]["spec"]["volumes"]
    assert [v["hostPath"]["path"] for v in volumes] == ["/var/lib/kubelet/device-plugins"]
    assert [v.split(" (")[0] for v in restricted_violations(plugin["spec"]["template"]["spec"])] == [
        "hostPath volumes", "restricted volume types", "runAsNonRoot != true", "seccompProfile"]


def test_infra_has_workloads_to_check() -> None:
    assert {n.split(":")[1] for n, _ in _workloads()} >= {"Deployment/mlflow", "StatefulSet/mlflow-db"}


@pytest.mark.parametrize("values", sorted((INFRA / "helm").glob("*.values.yaml")), ids=lambda p: p.name)
def test_the_prefect_server_and_workers_meet_the_restricted_profile(values: Path) -> None:
    component = yaml.safe_load(values.read_text())
    component = component.get("worker") or component["server"]
    pod = {"securityContext": component["podSecurityContext"],
           "containers": [{"name": "prefect", "securityContext": component["containerSecurityContext"]}]}
    assert restricted_violations(pod) == []


def test_the_namespace_enforces_the_restricted_profile() -> None:
    namespace = next(d for d in load_all(INFRA / "k8s" / "base.yaml") if d["kind"] == "Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster = load_all(INFRA / "eks" / "cluster.yaml")[0]
    assert labels["pod-security.kubernetes.io/enforce-version"] == f"v{cluster['metadata']['version']}"


BREAKS = [
    (lambda p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot != true (pod or container"),
    (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser=0 (pod must not set runAsUser=0)"),
    (lambda p: p["securityContext"].pop("seccompProfile"),
     'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"'),
    (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
     "must set securityContext.allowPrivilegeEscalation=false"),
    (lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
     'must set securityContext.capabilities.drop=["ALL"]'),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
     'must not include "SYS_ADMIN" in securityContext.capabilities.add'),
    (lambda p: p["containers"][0]["securityContext"].update(privileged=True),
     "must not set securityContext.privileged=true"),
    (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), 'hostPath volumes (volume "host")'),
    (lambda p: p.update(hostNetwork=True), "host namespaces (hostNetwork=true)"),
]


@pytest.mark.parametrize("breaks, complaint", BREAKS, ids=[c for _, c in BREAKS])
def test_the_checker_catches_each_rule(breaks: Any, complaint: str) -> None:
    pod = copy.deepcopy(render(TYPICAL)["spec"]["template"]["spec"])
    breaks(pod)
    assert any(complaint in v for v in restricted_violations(pod)), restricted_violations(pod)


def _image_env(dockerfile: Path) -> dict[str, str]:
    """Return the ENV values a Dockerfile sets (KEY=VALUE form, continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_the_job_can_write_where_the_image_keeps_state(name: str) -> None:
    """As a non-root user, HOME, SHIPYARD_HOME (dataset cache, Prefect state) and /tmp are writable mounts."""
    pod = RENDERED[name]()["spec"]["template"]["spec"]
    env = _image_env(REPO / "infra" / "docker" / "Dockerfile")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in pod["containers"][0]["volumeMounts"]}
    for path in (env["HOME"], env["SHIPYARD_HOME"], "/tmp"):
        mount = max((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len, default=None)
        assert mount is not None, f"{path} is on the image's root filesystem, which user 1000 cannot write"
        assert "emptyDir" in mounts[mount] and mounts[mount]["emptyDir"].get("medium") != "Memory", path
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 1000
    assert "USER 1000:1000" in (REPO / "infra" / "docker" / "Dockerfile").read_text()
