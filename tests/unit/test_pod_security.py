"""Pods meet the restricted Pod Security profile the shipyard namespace enforces.

``restricted_violations`` checks a pod spec against the rules of the Kubernetes Pod Security Standards
(baseline and restricted, as of Kubernetes 1.35) the way the PodSecurity admission controller does: what
the API server would refuse to create in the namespace. The rendered training and pipeline Jobs, every
workload under infra/k8s/ and the Prefect workers' Helm values go through it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import INFRA, REPO, kubernetes_manifests, load_all, pod_specs
from tests.unit.test_kube_job_template import TYPICAL, render

# Volume types the restricted profile allows.
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def _effective(pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    """Return a security setting as it applies to a container: its own, else the pod's."""
    own = container.get("securityContext", {})
    return own[field] if field in own else pod.get("securityContext", {}).get(field)


def _baseline(pod: dict[str, Any]) -> list[str]:
    problems = [f"{f} is true" for f in ("hostNetwork", "hostPID", "hostIPC") if pod.get(f)]
    problems += [f"volume {v['name']} is hostPath" for v in pod.get("volumes", []) if "hostPath" in v]
    sysctls = {s["name"] for s in pod.get("securityContext", {}).get("sysctls", [])}
    problems += [f"unsafe sysctl {s}" for s in sorted(sysctls - SAFE_SYSCTLS)]
    for c in _containers(pod):
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"container {c['name']} is privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"container {c['name']} uses a hostPort")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"container {c['name']} has procMount {sc['procMount']}")
        if (_effective(pod, c, "appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"container {c['name']} runs AppArmor-unconfined")
    return problems


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Return every restricted-profile rule the pod spec breaks (empty: it would be admitted)."""
    problems = _baseline(pod)
    problems += [f"volume {v['name']} has a type restricted forbids" for v in pod.get("volumes", [])
                 if not set(v) - {"name"} <= ALLOWED_VOLUMES]
    for c in _containers(pod):
        name, sc = c["name"], c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name} does not set allowPrivilegeEscalation: false")
        if _effective(pod, c, "runAsNonRoot") is not True:
            problems.append(f"container {name} does not set runAsNonRoot: true")
        if _effective(pod, c, "runAsUser") == 0:
            problems.append(f"container {name} runs as UID 0")
        if (_effective(pod, c, "seccompProfile") or {}).get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"container {name} has no RuntimeDefault or Localhost seccomp profile")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"container {name} does not drop ALL capabilities")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"container {name} adds capabilities {capabilities['add']}")
    if pod.get("securityContext", {}).get("runAsUser") == 0:
        problems.append("the pod runs as UID 0")
    return problems


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
            for pod in pod_specs(document):
                found.append((f"{path.relative_to(INFRA)}:{document['kind']}/{document['metadata']['name']}", pod))
    return found


@pytest.mark.parametrize("name, pod", _workloads(), ids=[n for n, _ in _workloads()])
def test_every_workload_under_infra_meets_the_restricted_profile(name: str, pod: dict[str, Any]) -> None:
    assert restricted_violations(pod) == []


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
    (lambda p: p["securityContext"].pop("runAsNonRoot"), "does not set runAsNonRoot: true"),
    (lambda p: p["securityContext"].update(runAsUser=0), "runs as UID 0"),
    (lambda p: p["securityContext"].pop("seccompProfile"), "no RuntimeDefault or Localhost seccomp"),
    (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
     "does not set allowPrivilegeEscalation: false"),
    (lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
     "does not drop ALL capabilities"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
     "adds capabilities"),
    (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "is privileged"),
    (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "is hostPath"),
    (lambda p: p.update(hostNetwork=True), "hostNetwork is true"),
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
