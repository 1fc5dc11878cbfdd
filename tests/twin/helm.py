"""What ``helm install <release> prefect/prefect-{worker,server} -n <ns> -f values`` creates, as object dicts.

Modelled from PrefectHQ/prefect-helm's templates (charts/prefect-worker: deployment, serviceaccount, role,
rolebinding, configmap, pdb; charts/prefect-server: deployment, service, serviceaccount) and the Bitnami common
chart's helpers they include:

    common.names.name      nameOverride, else the chart name; truncated to 63, "-" trimmed
    common.names.fullname  fullnameOverride, else the release name if it contains the name, else
                           "<release>-<name>"; truncated to 63, "-" trimmed. The charts' own values.yaml
                           default fullnameOverride to "prefect-worker" / "prefect-server".
    common.labels.standard app.kubernetes.io/{name,instance,managed-by}, helm.sh/chart
    common.labels.matchLabels app.kubernetes.io/{name,instance}

Only what the infra values use is modelled; a values key the model does not know fails loudly, so a new
setting cannot silently render nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CHART_VERSION = "0.0.0"  # the charts' Chart.yaml (the published version is stamped at release time)
APP_VERSION = "3-latest"

WORKER_DEFAULTS: dict[str, Any] = {
    "nameOverride": "", "fullnameOverride": "prefect-worker", "namespaceOverride": "",
    "commonLabels": {}, "commonAnnotations": {},
    "worker": {
        "clusterUid": "", "replicaCount": 1, "revisionHistoryLimit": 10,
        "image": {"repository": "prefecthq/prefect", "prefectTag": "3-latest", "pullPolicy": "IfNotPresent",
                  "debug": False},
        "config": {"workPool": "", "workQueues": [], "queryInterval": 5, "prefetchSeconds": 10, "http2": True,
                   "type": "kubernetes", "installPolicy": "prompt", "name": None, "limit": None,
                   "jobNamespace": "", "observerClusterWide": False, "baseJobTemplate": {}},
        "apiConfig": "cloud",
        "selfHostedServerApiConfig": {"apiUrl": ""},
        "nodeSelector": {}, "tolerations": [], "affinity": {}, "podSecurityContext": {},
        "containerSecurityContext": {}, "resources": {}, "extraEnvVars": [], "podLabels": {},
        "podDisruptionBudget": {}, "priorityClassName": "",
    },
    "serviceAccount": {"create": True, "name": "", "annotations": {}},
    "role": {"create": True, "namespace": None, "extraPermissions": []},
    "rolebinding": {"create": True},
}

SERVER_DEFAULTS: dict[str, Any] = {
    "nameOverride": "", "fullnameOverride": "prefect-server", "namespaceOverride": "",
    "commonLabels": {}, "commonAnnotations": {},
    "server": {"nodeSelector": {}, "podSecurityContext": {}, "containerSecurityContext": {}, "replicaCount": 1},
    "serviceAccount": {"create": True, "name": "", "annotations": {}, "automountServiceAccountToken": True},
    "service": {"portName": "server-svc-port", "port": 4200, "targetPort": 4200, "type": "ClusterIP"},
    "postgresql": {"enabled": True},
}

# The worker chart's Role rules, before role.extraPermissions (templates/role.yaml, self-hosted server).
WORKER_ROLE_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["events", "pods", "pods/log", "pods/status"], "verbs": ["get", "watch", "list"]},
    {"apiGroups": ["batch"], "resources": ["jobs"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
]


class UnmodelledValue(KeyError):
    """A values key the chart model does not know."""


def _merge(defaults: dict[str, Any], values: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in defaults:
            if where.split(".")[0] == "postgresql":
                out[key] = copy.deepcopy(value)  # the PostgreSQL subchart: passed through, not modelled
                continue
            raise UnmodelledValue(f"values key {path!r} is not modelled by tests/twin/helm.py")
        if isinstance(defaults[key], dict) and defaults[key] and isinstance(value, dict):
            out[key] = _merge(defaults[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _trunc(name: str) -> str:
    return name[:63].rstrip("-")


def chart_name(chart: str, values: dict[str, Any]) -> str:
    """Return common.names.name."""
    return _trunc(values.get("nameOverride") or chart)


def fullname(chart: str, release: str, values: dict[str, Any]) -> str:
    """Return common.names.fullname."""
    if values.get("fullnameOverride"):
        return _trunc(values["fullnameOverride"])
    name = values.get("nameOverride") or chart
    return _trunc(release if name in release else f"{release}-{name}")


def _labels(chart: str, release: str, values: dict[str, Any], component: str | None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": chart_name(chart, values), "helm.sh/chart": f"{chart}-{CHART_VERSION}",
              "app.kubernetes.io/instance": release, "app.kubernetes.io/managed-by": "Helm",
              "app.kubernetes.io/version": APP_VERSION}
    if component:
        labels["app.kubernetes.io/component"] = component
        labels["prefect-version"] = APP_VERSION
    labels.update(values.get("commonLabels") or {})
    return labels


def _meta(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels)}


def _worker_service_account(full: str, values: dict[str, Any]) -> str:
    account = values["serviceAccount"]
    return str(account["name"] or full) if account["create"] else str(account["name"] or "default")


def _worker_env(namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    worker, config = values["worker"], values["worker"]["config"]
    if worker["apiConfig"] != "selfHostedServer":
        raise UnmodelledValue("worker.apiConfig other than selfHostedServer is not modelled")
    if not worker["selfHostedServerApiConfig"]["apiUrl"]:
        raise ValueError("The Prefect Server API URL is required (worker.selfHostedServerApiConfig.apiUrl)")
    env = [{"name": "HOME", "value": "/home/prefect"},
           {"name": "PREFECT_WORKER_PREFETCH_SECONDS", "value": str(config["prefetchSeconds"])},
           {"name": "PREFECT_WORKER_QUERY_SECONDS", "value": str(config["queryInterval"])},
           {"name": "PREFECT_API_ENABLE_HTTP2", "value": str(config["http2"]).lower()},
           {"name": "PREFECT_API_URL", "value": worker["selfHostedServerApiConfig"]["apiUrl"]},
           {"name": "PREFECT_KUBERNETES_CLUSTER_UID", "value": worker["clusterUid"]}]
    if not config["observerClusterWide"]:
        env.append({"name": "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES",
                    "value": config["jobNamespace"] or namespace})
    env.append({"name": "PREFECT_DEBUG_MODE", "value": str(worker["image"]["debug"]).lower()})
    return env + list(worker["extraEnvVars"])


def _worker_deployment(release: str, namespace: str, values: dict[str, Any], full: str) -> dict[str, Any]:
    worker, config = values["worker"], values["worker"]["config"]
    if not config["workPool"]:
        raise ValueError("A Work Pool Name is required (worker.config.workPool)")
    labels = _labels("prefect-worker", release, values, "worker")
    args = ["prefect", "worker", "start", "--type", config["type"], "--pool", config["workPool"]]
    for queue in config["workQueues"]:
        args += ["--work-queue", queue]
    args += ["--install-policy", config["installPolicy"]]
    if config["limit"]:
        args += ["--limit", str(config["limit"])]
    if config["name"]:
        args += ["--name", config["name"]]
    container: dict[str, Any] = {
        "name": "prefect-worker", "image": f"{worker['image']['repository']}:{worker['image']['prefectTag']}",
        "imagePullPolicy": worker["image"]["pullPolicy"],
        "command": ["/usr/bin/tini", "-g", "--", "/opt/prefect/entrypoint.sh"], "args": args,
        "workingDir": "/home/prefect", "env": _worker_env(namespace, values),
        "volumeMounts": [{"mountPath": "/home/prefect", "name": "scratch", "subPathExpr": "home"},
                         {"mountPath": "/tmp", "name": "scratch", "subPathExpr": "tmp"}]}
    for key, field in (("resources", "resources"), ("containerSecurityContext", "securityContext")):
        if worker[key]:
            container[field] = copy.deepcopy(worker[key])
    spec: dict[str, Any] = {"serviceAccountName": _worker_service_account(full, values), "containers": [container],
                            "volumes": [{"name": "scratch", "emptyDir": {}}]}
    for key, field in (("affinity", "affinity"), ("nodeSelector", "nodeSelector"), ("tolerations", "tolerations"),
                       ("podSecurityContext", "securityContext"), ("priorityClassName", "priorityClassName")):
        if worker[key]:
            spec[field] = copy.deepcopy(worker[key])
    match = {"app.kubernetes.io/name": chart_name("prefect-worker", values), "app.kubernetes.io/instance": release,
             "app.kubernetes.io/component": "worker"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(full, namespace, labels),
            "spec": {"revisionHistoryLimit": worker["revisionHistoryLimit"], "replicas": worker["replicaCount"],
                     "selector": {"matchLabels": match},
                     "template": {"metadata": {"labels": {**labels, **worker["podLabels"]}}, "spec": spec}}}


def render_worker(release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the objects ``helm install <release> prefect/prefect-worker -n <namespace>`` creates."""
    merged = _merge(WORKER_DEFAULTS, values)
    namespace = merged["namespaceOverride"] or namespace
    full = fullname("prefect-worker", release, merged)
    labels = _labels("prefect-worker", release, merged, "worker")
    objects = [_worker_deployment(release, namespace, merged, full)]
    if merged["serviceAccount"]["create"]:
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": _meta(_worker_service_account(full, merged), namespace, labels)})
    role_namespace = merged["role"]["namespace"] or namespace
    if merged["role"]["create"]:
        objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                        "metadata": _meta(full, role_namespace, labels),
                        "rules": copy.deepcopy(WORKER_ROLE_RULES) + copy.deepcopy(merged["role"]["extraPermissions"])})
    if merged["rolebinding"]["create"]:
        objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": _meta(full, role_namespace, labels),
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": full},
                        "subjects": [{"kind": "ServiceAccount", "name": _worker_service_account(full, merged),
                                      "namespace": namespace}]})
    if merged["worker"]["podDisruptionBudget"]:
        objects.append({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                        "metadata": _meta(full, namespace, labels)})
    return objects


def render_server(release: str, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the objects ``helm install <release> prefect/prefect-server -n <namespace>`` creates (no subchart)."""
    merged = _merge(SERVER_DEFAULTS, values)
    namespace = merged["namespaceOverride"] or namespace
    full = fullname("prefect-server", release, merged)
    labels = _labels("prefect-server", release, merged, "server")
    account = merged["serviceAccount"]
    account_name = (account["name"] or full) if account["create"] else (account["name"] or "default")
    server = merged["server"]
    container: dict[str, Any] = {"name": "prefect-server"}
    if server["containerSecurityContext"]:
        container["securityContext"] = copy.deepcopy(server["containerSecurityContext"])
    spec: dict[str, Any] = {"serviceAccountName": account_name, "containers": [container]}
    if server["nodeSelector"]:
        spec["nodeSelector"] = copy.deepcopy(server["nodeSelector"])
    if server["podSecurityContext"]:
        spec["securityContext"] = copy.deepcopy(server["podSecurityContext"])
    match = {"app.kubernetes.io/name": chart_name("prefect-server", merged), "app.kubernetes.io/instance": release,
             "app.kubernetes.io/component": "server"}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(full, namespace, labels),
         "spec": {"replicas": server["replicaCount"], "selector": {"matchLabels": match},
                  "template": {"metadata": {"labels": labels}, "spec": spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(full, namespace, labels),
         "spec": {"type": merged["service"]["type"], "selector": match,
                  "ports": [{"name": merged["service"]["portName"], "port": merged["service"]["port"],
                             "targetPort": merged["service"]["targetPort"]}]}}]
    if account["create"]:
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": _meta(account_name, namespace, labels),
                        "automountServiceAccountToken": account["automountServiceAccountToken"]})
    return objects


def install(release: str, chart: str, namespace: str, values_file: Path) -> list[dict[str, Any]]:
    """Return the objects of ``helm install <release> prefect/<chart> -n <namespace> -f <values_file>``."""
    values = yaml.safe_load(values_file.read_text()) or {}
    if chart == "prefect-worker":
        return render_worker(release, namespace, values)
    if chart == "prefect-server":
        return render_server(release, namespace, values)
    raise UnmodelledValue(f"chart {chart!r} is not modelled (prefect-worker, prefect-server)")


__all__ = ["SERVER_DEFAULTS", "WORKER_DEFAULTS", "WORKER_ROLE_RULES", "UnmodelledValue", "chart_name", "fullname",
           "install", "render_server", "render_worker"]
