"""``shipyard cluster check``: ask a real cluster whether a pipeline run would get through, before one is started.

Read-only: every question is a SubjectAccessReview, a ``dryRun=All`` create, a list, or a GET through the API
server's service proxy. Each problem is one line naming the object and the fix (the exact rule, label or setting).

Checks, per cluster (one cluster plays both roles in the unified topology):

    access        a SubjectAccessReview for every row of ``shipyard.kube.access`` as the row's identity
    pod-security  the namespace enforces ``restricted``, and every pod Shipyard creates there passes admission
                  (created with ``dryRun=All``, so the ServiceAccount and Pod Security plugins really run)
    nodes         each pod's nodeSelector, affinity and tolerations match a node or a Karpenter NodePool; GPUs
                  are allocatable where a GPU pod lands; the NVIDIA device plugin DaemonSet runs
    room          the inference nodes hold the Deployment's replicas plus its surge, beside what already runs
    workers       a Prefect worker polls each work pool the cluster deployments use (an injected lookup)
    mlflow        the tracking server answers ``/health`` through its Service (the namespace's own address)
    images        the images are pinned references with a registry (the pull itself is not tried)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import httpx2
from lightkube import ALL_NS, ApiError, Client
from lightkube.config.client_adapter import Client as HttpClient
from lightkube.config.client_adapter import ConnectionParams
from lightkube.generic_resource import create_global_resource
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.authorization_v1 import SubjectAccessReview
from lightkube.resources.core_v1 import Namespace, Node, Pod
from lightkube.utils.quantity import parse_quantity

from shipyard.kube import access
from shipyard.kube.access import Access, ClusterRole, Identity, Topology

GPU = "nvidia.com/gpu"
NodePool = create_global_resource("karpenter.sh", "v1", "NodePool", "nodepools")
DEVICE_PLUGIN_MANIFEST = "infra/k8s/nvidia-device-plugin.yaml"
# The Role each component's rows live in (infra/k8s/base.yaml), named in the fix of a denied row.
ROLE_OF = {"pipeline": "shipyard-pipeline", "rollout": "shipyard-rollout", "launcher": "shipyard-train",
           "worker": "shipyard-worker"}
_TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Problem:
    """One thing that would stop a run: the check, the object it is about, what is wrong, and the fix."""

    check: str
    subject: str
    message: str
    fix: str

    def line(self) -> str:
        """Return the one line ``shipyard cluster check`` prints."""
        return f"[{self.check}] {self.subject}: {self.message}; fix: {self.fix}"


@dataclass(frozen=True)
class PlannedPod:
    """A pod Shipyard will create: where it comes from (named in fixes), its cluster, its manifest."""

    label: str  # e.g. "pipeline job (deployments/templates/pipeline.json)"
    role: ClusterRole
    manifest: dict[str, Any]
    replaces: dict[str, str] = field(default_factory=dict)  # selector of the pods a rollout of it replaces


@dataclass
class Target:
    """One cluster to check: its client (namespace set) and the roles it plays (both when unified)."""

    name: str  # the kube context, named in problems
    client: Client
    roles: tuple[ClusterRole, ...]


@dataclass
class Plan:
    """What the cluster path will do, as the check needs it (built from settings by the caller)."""

    topology: Topology
    namespace: str
    pods: list[PlannedPod]
    inference_replicas: int
    inference_surge: int
    work_pools: list[str]
    images: list[str]
    mlflow_service: str = "mlflow:5000"  # <service>:<port> in the namespace
    settings_problems: list[Problem] = field(default_factory=list)


WorkerLookup = Callable[[str], "list[str] | None"]  # pool -> names of online workers (None: no such pool)


# -- access -------------------------------------------------------------------------------------------------

def _review(identity: Identity, row: Access, namespace: str) -> SubjectAccessReview:
    if identity.kind == "ServiceAccount":
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    else:
        groups = [identity.name, "system:authenticated"]
    attributes = ResourceAttributes(verb=row.verb, group=row.group, resource=row.resource,
                                    subresource=row.subresource or None,
                                    namespace=namespace if row.namespaced else None)
    return SubjectAccessReview(spec=SubjectAccessReviewSpec(user=identity.username, groups=groups,
                                                            resourceAttributes=attributes))


def _rule(row: Access) -> str:
    return f'{{apiGroups: ["{row.group}"], resources: ["{row.full_resource}"], verbs: ["{row.verb}"]}}'


def check_access(target: Target, topology: Topology, namespace: str) -> list[Problem]:
    """Ask, as each identity that calls this cluster, for each row of the access table."""
    problems: list[Problem] = []
    for identity, rows in access.identities(topology).items():
        if identity.cluster not in target.roles:
            continue
        for row in dict.fromkeys(rows):
            answer = target.client.create(_review(identity, row, namespace))
            if answer.status is not None and answer.status.allowed:
                continue
            subject = f"{identity.kind} {namespace}/{identity.name}" if identity.kind == "ServiceAccount" else (
                f"Group {identity.name}")
            problems.append(Problem(
                "access", f"{subject} in {target.name}",
                f"{row.component} cannot {row.verb} {row.full_resource}"
                f"{' (' + row.group + ')' if row.group else ''} in namespace {namespace}",
                f"add the rule {_rule(row)} to Role {ROLE_OF[row.component]} and bind it to {identity.name} "
                "(infra/k8s/base.yaml)"))
    return problems


# -- pod security ---------------------------------------------------------------------------------------------

def check_pod_security(target: Target, namespace: str, pods: Sequence[PlannedPod]) -> list[Problem]:
    """Check the namespace's enforced level, then create each pod with dryRun=All so admission really runs."""
    try:
        ns = target.client.get(Namespace, namespace)
    except ApiError as exc:
        if exc.status.code != 404:
            raise
        return [Problem("pod-security", f"namespace {namespace} in {target.name}", "does not exist",
                        "kubectl apply -f infra/k8s/base.yaml")]
    labels = (ns.metadata.labels if ns.metadata else None) or {}
    problems = []
    level = labels.get("pod-security.kubernetes.io/enforce", "privileged")
    if level != "restricted":
        problems.append(Problem("pod-security", f"namespace {namespace} in {target.name}",
                                f"enforces Pod Security level {level!r}, the pods are built for 'restricted'",
                                "label it pod-security.kubernetes.io/enforce=restricted (infra/k8s/base.yaml)"))
    for index, planned in enumerate(p for p in pods if p.role in target.roles):
        pod = cast(Pod, Pod.from_dict({**planned.manifest, "metadata": {
            **planned.manifest.get("metadata", {}), "name": f"shipyard-preflight-{index}", "namespace": namespace}}))
        try:
            target.client.create(pod, namespace=namespace, dry_run=True)
        except ApiError as exc:
            problems.append(Problem("pod-security", f"{planned.label} in {target.name}",
                                    f"refused by admission: {exc.status.message}",
                                    "change the pod template named here to meet the message"))
    return problems


# -- nodes, GPUs, room ----------------------------------------------------------------------------------------

def _tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and not t.get("key"):
            return True
        if t.get("key") != taint.get("key"):
            continue
        if t.get("operator") == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _expression_holds(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expression["key"], expression["operator"], expression.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels:
        number, bound = int(labels[key]), int(values[0])
        return number > bound if op == "Gt" else number < bound
    return False


def selects(spec: Mapping[str, Any], labels: Mapping[str, str], taints: Iterable[Mapping[str, Any]]) -> bool:
    """Return whether a pod spec's nodeSelector, required node affinity and tolerations admit these labels/taints."""
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if required and not any(all(_expression_holds(e, labels) for e in term.get("matchExpressions", []))
                            for term in required.get("nodeSelectorTerms", [])):
        return False
    tolerations = spec.get("tolerations") or []
    return all(_tolerates(tolerations, t) for t in taints if t.get("effect") in ("NoSchedule", "NoExecute"))


def requests(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """Return what a pod spec requests (a container's limits stand in for requests it leaves out)."""
    total: dict[str, Decimal] = {}
    for container in spec.get("containers", []):
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in asked.items():
            total[name] = total.get(name, Decimal(0)) + (parse_quantity(str(value)) or Decimal(0))
    return total


def _pool_nodes(pools: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, str], list[Any]]]:
    """Return (name, labels, taints) a NodePool's nodes would carry (single-valued ``In`` requirements as labels)."""
    out = []
    for pool in pools:
        template = (pool.get("spec") or {}).get("template") or {}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        for req in (template.get("spec") or {}).get("requirements") or []:
            if req.get("operator") == "In" and len(req.get("values") or []) >= 1:
                labels.setdefault(req["key"], req["values"][0])
        out.append((pool["metadata"]["name"], labels, list((template.get("spec") or {}).get("taints") or [])))
    return out


def _selector_text(spec: Mapping[str, Any]) -> str:
    selector = ",".join(f"{k}={v}" for k, v in (spec.get("nodeSelector") or {}).items()) or "none"
    tolerated = ",".join(f"{t.get('key', '*')}:{t.get('effect', '*')}" for t in spec.get("tolerations") or [])
    return f"nodeSelector {selector}; tolerates {tolerated or 'nothing'}"


def _daemonset_plugin(daemonsets: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for ds in daemonsets:
        images = [c.get("image", "") for c in ds["spec"]["template"]["spec"].get("containers", [])]
        if "nvidia-device-plugin" in ds["metadata"]["name"] or any("k8s-device-plugin" in i for i in images):
            return ds
    return None


def check_nodes(target: Target, plan: Plan) -> list[Problem]:
    """Check that each pod has somewhere to run, GPUs where it needs them, and the inference pods room to surge."""
    client = target.client
    nodes = [n.to_dict() for n in client.list(Node)]
    try:
        pools = [cast(dict[str, Any], p.to_dict()) for p in client.list(NodePool)]  # type: ignore[no-untyped-call]
    except ApiError as exc:
        if exc.status.code != 404:
            raise
        pools = []
    daemonsets = [d.to_dict() for d in client.list(DaemonSet, namespace="kube-system")]
    plugin = _daemonset_plugin(daemonsets)
    problems: list[Problem] = []
    for planned in (p for p in plan.pods if p.role in target.roles):
        spec = _pod_spec(planned.manifest)
        gpus = requests(spec).get(GPU, Decimal(0))
        matching = [n for n in nodes if selects(spec, n["metadata"].get("labels") or {}, n["spec"].get("taints") or [])]
        matching_pools = [name for name, labels, taints in _pool_nodes(pools) if selects(spec, labels, taints)]
        where = f"{planned.label} in {target.name}"
        if not matching and not matching_pools:
            problems.append(Problem(
                "nodes", where, f"no node and no Karpenter NodePool matches it ({_selector_text(spec)})",
                "create the node group or NodePool it selects (infra/eks/*.yaml nodeGroups labels and taints, "
                "infra/karpenter/train.yaml), or fix the template's nodeSelector/tolerations"))
            continue
        if gpus and plugin is None:
            problems.append(Problem(
                "nodes", where, f"requests {gpus} {GPU} but no NVIDIA device plugin DaemonSet runs in kube-system, "
                "so no node advertises GPUs", f"kubectl apply -f {DEVICE_PLUGIN_MANIFEST}"))
        elif gpus and matching and not matching_pools and not any(
                (parse_quantity(str((n.get("status") or {}).get("allocatable", {}).get(GPU, "0"))) or 0) >= gpus
                for n in matching):
            names = ", ".join(n["metadata"]["name"] for n in matching)
            problems.append(Problem("nodes", where, f"requests {gpus} {GPU}, and its nodes ({names}) allocate none",
                                    f"check that the device plugin's pods run on them ({DEVICE_PLUGIN_MANIFEST})"))
        if planned.role == "inference" and matching:
            problems.extend(_room(target, plan, planned, spec, matching))
    return problems


def _pod_spec(manifest: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest.get("spec", {})
    return spec.get("template", {}).get("spec", spec) if "template" in spec else spec


def _room(target: Target, plan: Plan, planned: PlannedPod, spec: Mapping[str, Any],
          nodes: list[dict[str, Any]]) -> list[Problem]:
    """Count how many inference pods the matching nodes hold beside the other pods running there."""
    own_labels = planned.replaces
    running: list[dict[str, Any]] = [p.to_dict() for p in target.client.list(Pod, namespace=ALL_NS)]
    asked = {k: v for k, v in requests(spec).items() if v > 0}
    fit = 0
    for node in nodes:
        free = {k: parse_quantity(str(v)) or Decimal(0) for k, v in (node.get("status") or {}).get(
            "allocatable", {}).items()}
        for pod in running:
            on_node = (pod.get("spec") or {}).get("nodeName") == node["metadata"]["name"]
            own = own_labels and all(((pod.get("metadata") or {}).get("labels") or {}).get(k) == v
                                     for k, v in own_labels.items())
            if on_node and not own and (pod.get("status") or {}).get("phase") not in _TERMINAL:
                for k, v in requests(pod.get("spec") or {}).items():
                    free[k] = free.get(k, Decimal(0)) - v
        fit += min((math.floor(free.get(k, Decimal(0)) / v) for k, v in asked.items()), default=0)
    need = plan.inference_replicas + plan.inference_surge
    if fit >= need:
        return []
    return [Problem(
        "room", f"{planned.label} in {target.name}",
        f"the nodes it selects hold {fit} such pod(s) beside what runs there; a rollout needs replicas "
        f"{plan.inference_replicas} + maxSurge {plan.inference_surge} = {need}",
        "raise the inference node group's desiredCapacity and minSize (infra/eks/*.yaml nodeGroups[inference]) or "
        "lower SHIPYARD_INFERENCE_REPLICAS")]


# -- workers, MLflow, images --------------------------------------------------------------------------------

def check_workers(pools: Sequence[str], online: WorkerLookup) -> list[Problem]:
    """Check that a worker polls each work pool (asked of the Prefect API by the caller's lookup)."""
    problems = []
    for pool in pools:
        workers = online(pool)
        if not workers:
            state = "does not exist" if workers is None else "has no worker polling it"
            problems.append(Problem("workers", f"work pool {pool}", state,
                                    f"install its worker (docs/cluster.md step 6: helm install ... "
                                    f"prefect/prefect-worker with worker.config.workPool={pool})"))
    return problems


def check_mlflow(target: Target, namespace: str, service: str) -> list[Problem]:
    """GET MLflow's /health through its Service (API server proxy): it has ready endpoints and answers."""
    path = f"/api/v1/namespaces/{namespace}/services/{service}/proxy/health"
    fix = ("kubectl -n shipyard rollout status deployment/mlflow, and check its logs "
           "(infra/k8s/mlflow.yaml, docs/cluster.md step 5)")
    try:
        with HttpClient(target.client.config, ConnectionParams(timeout=httpx2.Timeout(30.0))) as http:
            resp = http.get(path)
    except httpx2.HTTPError as exc:
        return [Problem("mlflow", f"service {namespace}/{service} in {target.name}", f"unreachable: {exc}", fix)]
    if resp.status_code == 200 and resp.text.strip() == "OK":
        return []
    return [Problem("mlflow", f"service {namespace}/{service} in {target.name}",
                    f"/health answered HTTP {resp.status_code}: {' '.join(resp.text.split())[:200]}", fix)]


_REFERENCE = re.compile(r"^(?P<registry>[^/]+)/(?P<repository>[a-z0-9._/-]+)(?::(?P<tag>[\w.-]+))?"
                        r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def check_images(images: Iterable[str]) -> list[Problem]:
    """Check that each image names a registry and a pinned tag or digest (a pull is not attempted)."""
    problems = []
    for image in dict.fromkeys(images):
        match = _REFERENCE.match(image)
        registry = match["registry"] if match else ""
        if not match or not ("." in registry or ":" in registry or registry == "localhost"):
            problems.append(Problem("images", f"image {image}", "names no registry, so nodes pull it from Docker Hub",
                                    "set SHIPYARD_IMAGE (and SHIPYARD_INFERENCE_IMAGE) to "
                                    "<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>"))
        elif not match["digest"] and match["tag"] in (None, "latest"):
            problems.append(Problem("images", f"image {image}", "is not pinned (no tag, or 'latest')",
                                    "push it with a version tag and set that tag in SHIPYARD_IMAGE"))
    return problems


def check(targets: Sequence[Target], plan: Plan, online: WorkerLookup) -> list[Problem]:
    """Run every check against every cluster; return the problems, in check order."""
    problems = list(plan.settings_problems)
    for target in targets:
        problems += check_access(target, plan.topology, plan.namespace)
        problems += check_pod_security(target, plan.namespace, plan.pods)
        problems += check_nodes(target, plan)
        if "training" in target.roles:
            problems += check_mlflow(target, plan.namespace, plan.mlflow_service)
    problems += check_workers(plan.work_pools, online)
    problems += check_images(plan.images)
    return problems


__all__ = ["DEVICE_PLUGIN_MANIFEST", "Plan", "PlannedPod", "Problem", "Target", "WorkerLookup", "check",
           "check_access", "check_images", "check_mlflow", "check_nodes", "check_pod_security", "check_workers",
           "requests", "selects"]
