"""What the cluster deployments will ask of a cluster, as ``shipyard cluster check`` checks it.

The pods are the ones the cluster path really creates: each work pool's base job template rendered with the job
variables ``shipyard deploy cluster`` sets, the multi-node Indexed Job's pod, and the inference Deployment's pod.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from prefect.utilities.templating import apply_values

from deployments import for_environment
from deployments.apply import _cluster_pool_template, cluster_env, cluster_job_variables
from shipyard.kube import indexed, inference
from shipyard.kube.access import Topology
from shipyard.kube.preflight import Plan, PlannedPod, Problem
from shipyard.settings import Settings

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def topology(settings: Settings) -> Topology:
    """Return 'dedicated' when the rollout goes to another cluster (its kubeconfig or context is set)."""
    return "dedicated" if settings.inference_kubeconfig or settings.inference_kube_context else "unified"


def _job_pod(template: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
    """Render a base job template's Job the way a worker does (defaults, then the deployment's job variables)."""
    defaults = {k: v.get("default") for k, v in template["variables"].get("properties", {}).items()
                if "default" in v}
    job: dict[str, Any] = apply_values(template["job_configuration"]["job_manifest"], {**defaults, **variables})
    pod: dict[str, Any] = job["spec"]["template"]
    for container in pod["spec"].get("containers", []):  # the worker turns the env mapping into a list
        if isinstance(container.get("env"), dict):
            container["env"] = [{"name": k, "value": str(v)} for k, v in container["env"].items()]
    for field in ("parallelism", "completions"):  # prefect-kubernetes' pod-spec keys, which the API server drops
        pod["spec"].pop(field, None)
    return pod


def _pods(settings: Settings) -> list[PlannedPod]:
    env = cluster_env(settings)
    pods, seen = [], set()
    for spec in for_environment("cluster"):
        pool = spec.work_pool(settings)
        if pool in seen:
            continue
        seen.add(pool)
        source = f"deployments/templates/{spec.job_template}.json" if spec.job_template else "the default template"
        pods.append(PlannedPod(f"pod of work pool {pool} ({source})", "training",
                               _job_pod(_cluster_pool_template(spec), cluster_job_variables(spec, settings, env))))
    node = indexed.job_manifest(indexed.JobPlan(
        name="shipyard-preflight", namespace=settings.kube_namespace, image=settings.image, run_id="preflight",
        dataset="preflight", version="0", params_json="{}", nodes=2, procs_per_node=1, env=env))
    pods.append(PlannedPod("multi-node training pod (shipyard/kube/indexed.py)", "training", node["spec"]["template"]))
    pods.append(PlannedPod("inference pod (shipyard/kube/inference.py)", "inference",
                           inference.pod_template(settings, "preflight", "1"), dict(inference.SELECTOR)))
    return pods


def _settings_problems(settings: Settings, where: Topology) -> list[Problem]:
    problems = []
    host = urlparse(settings.mlflow_tracking_uri or "").hostname
    if host is None or host in _LOOPBACK:
        problems.append(Problem("settings", "SHIPYARD_MLFLOW_TRACKING_URI",
                                f"is {settings.mlflow_tracking_uri or 'unset'}: pods cannot reach this machine",
                                "export SHIPYARD_MLFLOW_TRACKING_URI=http://mlflow.shipyard.svc.cluster.local:5000"))
    if where == "dedicated" and not settings.inference_mlflow_tracking_uri:
        problems.append(Problem("settings", "SHIPYARD_INFERENCE_MLFLOW_TRACKING_URI",
                                "is unset: inference pods in the inference cluster cannot resolve the training "
                                "cluster's MLflow Service name",
                                "export it as http://<mlflow-internal load balancer hostname>:5000 "
                                "(docs/cluster.md, Dedicated)"))
    return problems


def cluster_plan(settings: Settings) -> Plan:
    """Return what the cluster deployments will create and need, from these settings."""
    where = topology(settings)
    strategy = inference.deployment(settings, "preflight", "1")["spec"]["strategy"]["rollingUpdate"]
    pools = list(dict.fromkeys(spec.work_pool(settings) for spec in for_environment("cluster")))
    return Plan(topology=where, namespace=settings.kube_namespace, pods=_pods(settings),
                inference_replicas=settings.inference_replicas, inference_surge=int(strategy["maxSurge"]),
                work_pools=pools, images=[settings.image, settings.resolved_inference_image()],
                settings_problems=_settings_problems(settings, where))
