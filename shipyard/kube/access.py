"""Every Kubernetes API request each Shipyard component makes, in one table.

Used three ways: the cluster twin refuses a request that is not in it, a test checks that the RBAC in
``infra/`` grants exactly it (least privilege, both topologies), and ``shipyard cluster check`` asks a real
cluster for each row with a SubjectAccessReview as the row's identity.

Components (who makes the calls, and from where):

    pipeline   the pipeline flow's pod (pipeline-flow/cluster, rollout-flow/cluster): watches the train flow
               run's Job for an unschedulable pod (shipyard/kube/scheduling.py) and deletes it then.
    rollout    the Kubernetes rollout target (shipyard/rollout/kubernetes.py, shipyard/kube/progress.py), run in
               the pipeline pod: server-side apply of the Service, PDB and Deployment (patch; create when the
               object is new), rollout status, pods and events to explain a stall, the smoke test through the
               service proxy (POST = create services/proxy), delete of a first Deployment that failed.
    launcher   the train flow's pod when ``nodes > 1`` (shipyard/training/multinode.py, shipyard/kube/indexed.py):
               creates, reads and deletes each attempt's Indexed Job and its headless Service, lists its pods.
    worker     the Prefect Kubernetes workers (prefect-kubernetes 0.8 KubernetesWorker and its kopf observer,
               watching the namespace set by PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES): create the
               flow run's Job, delete it on cancellation, list/watch/get Jobs and Pods, read a crashed pod's
               log, post kopf's handler events. The cluster uid is looked up by ``helm install`` (not the worker).

The training node pods and the inference pods make no API calls (rows: none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Component = Literal["pipeline", "rollout", "launcher", "worker", "node", "inference"]
Topology = Literal["unified", "dedicated"]
ClusterRole = Literal["training", "inference"]  # which cluster a request goes to (one cluster when unified)

COMPONENTS: tuple[Component, ...] = ("pipeline", "rollout", "launcher", "worker", "node", "inference")
NAMESPACE = "shipyard"


@dataclass(frozen=True)
class Access:
    """One API request a component makes: ``verb`` on ``resource[/subresource]`` in ``group``, in its namespace."""

    component: Component
    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespaced: bool = True  # in the Shipyard namespace; False: cluster-scoped

    @property
    def full_resource(self) -> str:
        """Return ``resource`` or ``resource/subresource`` as RBAC rules name it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(frozen=True)
class Identity:
    """Who a component is to the API server: a ServiceAccount (name in NAMESPACE) or a user in a group."""

    kind: Literal["ServiceAccount", "Group"]
    name: str
    cluster: ClusterRole

    @property
    def username(self) -> str:
        """Return the user name RBAC sees (a group member's own name is not known here)."""
        return f"system:serviceaccount:{NAMESPACE}:{self.name}" if self.kind == "ServiceAccount" else self.name


def _rows(component: Component, *calls: tuple[str, str, str]) -> tuple[Access, ...]:
    out: list[Access] = []
    for verbs, group, resource in calls:
        name, _, sub = resource.partition("/")
        out.extend(Access(component, verb, group, name, sub) for verb in verbs.split())
    return tuple(out)


TABLE: tuple[Access, ...] = (
    *_rows("pipeline",
           ("list delete", "batch", "jobs"),
           ("list", "", "pods"),
           ("list", "", "events")),
    *_rows("rollout",
           ("get create patch delete", "apps", "deployments"),
           ("create patch", "", "services"),
           ("create patch", "policy", "poddisruptionbudgets"),
           ("list", "", "pods"),
           ("list", "", "events"),
           ("create", "", "services/proxy")),
    *_rows("launcher",
           ("create get list delete", "batch", "jobs"),
           ("create", "", "services"),
           ("list", "", "pods"),
           ("list", "", "events")),
    *_rows("worker",
           ("create get list watch delete", "batch", "jobs"),
           ("list watch", "", "pods"),
           ("get", "", "pods/log"),
           ("create", "", "events")),
)

# The identity each component runs as, per topology and cluster. The pipeline pod's ServiceAccount keeps its
# historical name prefect-worker (its IRSA role is the pipeline's S3 policy, infra/eks/cluster.yaml); the Prefect
# workers run as shipyard-worker. The train flow pod and the node pods share shipyard-train (IRSA).
_IDENTITIES: dict[tuple[Topology, Component], tuple[Identity, ...]] = {
    ("unified", "pipeline"): (Identity("ServiceAccount", "prefect-worker", "training"),),
    ("unified", "rollout"): (Identity("ServiceAccount", "prefect-worker", "training"),),
    ("unified", "launcher"): (Identity("ServiceAccount", "shipyard-train", "training"),),
    ("unified", "node"): (Identity("ServiceAccount", "shipyard-train", "training"),),
    ("unified", "worker"): (Identity("ServiceAccount", "shipyard-worker", "training"),),
    ("unified", "inference"): (Identity("ServiceAccount", "shipyard-inference", "training"),),
    ("dedicated", "pipeline"): (Identity("ServiceAccount", "prefect-worker", "training"),),
    ("dedicated", "rollout"): (Identity("Group", "shipyard-rollout", "inference"),),
    ("dedicated", "launcher"): (Identity("ServiceAccount", "shipyard-train", "training"),),
    ("dedicated", "node"): (Identity("ServiceAccount", "shipyard-train", "training"),),
    ("dedicated", "worker"): (Identity("ServiceAccount", "shipyard-worker", "training"),),
    ("dedicated", "inference"): (Identity("ServiceAccount", "shipyard-inference", "inference"),),
}


def rows(component: Component) -> tuple[Access, ...]:
    """Return every request ``component`` makes."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (one of: {', '.join(COMPONENTS)})")
    return tuple(row for row in TABLE if row.component == component)


def identity(component: Component, topology: Topology) -> Identity:
    """Return who ``component`` is to the cluster it calls in ``topology``."""
    return _IDENTITIES[(topology, component)][0]


def identities(topology: Topology) -> dict[Identity, tuple[Access, ...]]:
    """Return each identity of ``topology`` with the union of its components' rows (what RBAC must grant)."""
    out: dict[Identity, list[Access]] = {}
    for component in COMPONENTS:
        out.setdefault(identity(component, topology), []).extend(rows(component))
    return {who: tuple(found) for who, found in out.items()}


__all__ = ["COMPONENTS", "NAMESPACE", "TABLE", "Access", "ClusterRole", "Component", "Identity", "Topology",
           "identities", "identity", "rows"]
