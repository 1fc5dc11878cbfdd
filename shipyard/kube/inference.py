"""The inference endpoint on Kubernetes as data: a Deployment, its Service and its PodDisruptionBudget.

Every replica serves the same model version: the version is pinned in the pod template (the server's
arguments, a label and annotations), so a new version is a new template and a rolling update. Pods meet the
"restricted" Pod Security Standard and land on the inference node group. The tracking URI reaches the pod
through the environment, and one carrying credentials is refused: the spec is readable by anyone who can
read Deployments (credentials come from IRSA, or from a Secret the cluster admin mounts).
"""

from __future__ import annotations

import re
from typing import Any

from shipyard.errors import ConfigError
from shipyard.settings import Settings, redact

NAME = "shipyard-inference"
SERVICE_ACCOUNT = "shipyard-inference"
PRIORITY_CLASS = "shipyard-inference"
CONTAINER = "server"
PORT = 8080
SERVICE_PORT = 80
PORT_NAME = "http"
SCRATCH = "/tmp"  # noqa: S108 (the pod's own emptyDir, not a shared host directory)
UID = 1000  # the inference image's user (infra/docker/Dockerfile.inference)
MODEL_NAME_ANNOTATION = "shipyard.dev/model-name"
MODEL_VERSION_ANNOTATION = "shipyard.dev/model-version"
MODEL_VERSION_LABEL = "shipyard.dev/model-version"
PRESTOP_SLEEP_SECONDS = 10  # long enough for kube-proxy and load balancers to drop the pod's endpoint
SHUTDOWN_SECONDS = 30  # in-flight requests finish after SIGTERM
MIN_READY_SECONDS = 10
SELECTOR = {"app.kubernetes.io/name": "shipyard-inference", "app.kubernetes.io/instance": NAME}
LABELS = {**SELECTOR, "app.kubernetes.io/managed-by": "shipyard"}
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


def cluster_tracking_uri(settings: Settings) -> str:
    """Return the MLflow URI inference pods use; refuse a local database or one carrying credentials.

    In the dedicated topology the inference cluster reaches MLflow by another name (the training cluster's
    internal load balancer) than the pipeline does: SHIPYARD_INFERENCE_MLFLOW_TRACKING_URI, when set.
    """
    variable = "SHIPYARD_INFERENCE_MLFLOW_TRACKING_URI" if settings.inference_mlflow_tracking_uri \
        else "SHIPYARD_MLFLOW_TRACKING_URI"
    uri = settings.inference_mlflow_tracking_uri or settings.resolved_mlflow_uri()
    if not uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(f"{variable}={redact(uri)} is not a server inference pods can reach; "
                          "set it to the MLflow server's http(s) URL")
    if redact(uri) != uri:
        raise ConfigError(f"{variable} carries credentials: the Deployment's spec is readable in "
                          "the cluster, so give pods credentials through IRSA or a Kubernetes secret instead")
    return uri


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT_NAME}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def _container(settings: Settings, model_name: str, version: str, tracking_uri: str) -> dict[str, Any]:
    limits: dict[str, Any] = {"memory": settings.inference_memory}
    if settings.inference_gpus:
        limits["nvidia.com/gpu"] = settings.inference_gpus
    return {
        "name": CONTAINER,
        "image": settings.resolved_inference_image(),
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "shipyard.serving"],
        "args": ["--model-uri", f"models:/{model_name}/{version}", "--model-name", model_name,
                 "--model-version", version, "--host", "0.0.0.0", "--port", str(PORT)],  # noqa: S104 (pod IP)
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": tracking_uri},
                {"name": "MLFLOW_REGISTRY_URI", "value": tracking_uri},
                # The root filesystem is read-only: downloads, caches and temp files go to the scratch volume.
                {"name": "HOME", "value": SCRATCH},
                {"name": "TMPDIR", "value": SCRATCH},
                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": settings.inference_cpu, "memory": settings.inference_memory},
                      "limits": limits},
        # Loading a model can take minutes; readiness means "warmed up and answered" (/health), liveness
        # only "the process answers" (/ping), so a slow prediction never gets a pod killed.
        "startupProbe": _probe("/ping", 5, 120),
        "readinessProbe": _probe("/health", 5, 2),
        "livenessProbe": _probe("/ping", 10, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
    }


def pod_template(settings: Settings, model_name: str, version: str) -> dict[str, Any]:
    """Return the pod template serving ``models:/model_name/version`` on the inference node group."""
    if not _LABEL_VALUE.fullmatch(version):
        raise ConfigError(f"model version '{version}' of '{model_name}' is not a registered version number")
    spec: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,  # IRSA: read-only S3 for the model's artifacts
        "priorityClassName": PRIORITY_CLASS,
        "nodeSelector": {"role": "inference"},
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_SECONDS + SHUTDOWN_SECONDS,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(settings, model_name, version, cluster_tracking_uri(settings))],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}}],
    }
    if settings.inference_gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {**LABELS, MODEL_VERSION_LABEL: version},
                         "annotations": {MODEL_NAME_ANNOTATION: model_name, MODEL_VERSION_ANNOTATION: version}},
            "spec": spec}


def deployment(settings: Settings, model_name: str, version: str) -> dict[str, Any]:
    """Return the Deployment: a zero-downtime rolling update to ``version`` with a progress deadline."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": settings.kube_namespace, "labels": LABELS},
        "spec": {
            "replicas": settings.inference_replicas,
            "selector": {"matchLabels": SELECTOR},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "minReadySeconds": MIN_READY_SECONDS,
            "progressDeadlineSeconds": settings.inference_progress_deadline_seconds,
            "revisionHistoryLimit": 5,
            "template": pod_template(settings, model_name, version),
        },
    }


def service(settings: Settings) -> dict[str, Any]:
    """Return the ClusterIP Service in front of the ready replicas."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": settings.kube_namespace, "labels": LABELS},
        "spec": {"type": "ClusterIP", "selector": SELECTOR,
                 "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}]},
    }


def disruption_budget(settings: Settings) -> dict[str, Any]:
    """Return the PodDisruptionBudget: node drains evict one replica at a time; broken pods never block them."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": NAME, "namespace": settings.kube_namespace, "labels": LABELS},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def endpoint(settings: Settings) -> str:
    """Return the Service's base URL inside the cluster."""
    return f"http://{NAME}.{settings.kube_namespace}.svc.cluster.local"


def proxy_path(namespace: str, path: str) -> str:
    """Return the API server's service-proxy path to ``path`` on the Service."""
    return f"/api/v1/namespaces/{namespace}/services/{NAME}:{PORT_NAME}/proxy/{path.lstrip('/')}"
