"""The cluster twin: an in-process Kubernetes (EKS) that enforces what a real cluster enforces.

The product code talks to it through lightkube and prefect-kubernetes (kubernetes-asyncio), over HTTP(S),
exactly as it talks to EKS. Nothing in it answers 200 to a request it does not model: such a request is
refused with 501 and recorded, and the ``twin`` fixtures fail the test that made it.

Modules (each owns one concern; they meet only through the object store and the hooks named here):

    store.py       objects (namespaced and cluster-scoped), resourceVersions, watch history; thread-safe.
                   Extends tests.fakekube.FakeKube's model: ``put``, ``get``, ``remove``, ``listing``,
                   ``objects``, ``lock``, ``changes``.
    api.py         the HTTP(S) API server over the store: authentication (a bearer token per identity),
                   authorization (rbac.py), admission (podsecurity.py, on every pod, whoever creates it),
                   subresources (status, log, proxy), server-side apply, dryRun, (Self)SubjectAccessReview.
    rbac.py        Kubernetes RBAC evaluation over Role/ClusterRole/RoleBinding/ClusterRoleBinding objects:
                   ``authorize(objects, user, request) -> Decision`` and the API server's 403 message.
    podsecurity.py Pod Security Standards (baseline, restricted) as the PodSecurity admission plugin
                   evaluates them, and the namespace labels that choose the level.
    nodes.py       nodes modelled from infra/: eksctl managed node groups at their sizes, Karpenter NodePools
                   that provision on demand up to their limits; instance types' allocatable resources;
                   GPUs advertised only where a device plugin runs.
    scheduler.py   ``place(pod, nodes, pods) -> Placement``: nodeSelector, affinity, taints, requests;
                   the scheduler's ``FailedScheduling`` message when nothing fits.
    controllers.py Job (Indexed, podFailurePolicy, backoffLimitPerIndex, activeDeadlineSeconds),
                   Deployment and ReplicaSet (rolling update by maxSurge/maxUnavailable and readiness),
                   endpoints, PodDisruptionBudget status, garbage collection by ownerReferences.
    kubelet.py     runs a scheduled pod's containers as local processes: the image's filesystem (images.py),
                   exactly the environment the pod spec gives (plus what the kubelet injects), its volumes
                   as mounts in a private mount namespace, its user, probes, exit codes and termination.
    network.py     pod IPs and Service ClusterIPs on loopback addresses, kube-proxy forwarding, and cluster
                   DNS names for processes inside pods (a hook the pod images load).

    Beside them: resources.py (the resource table, selector parsing), handlers.py (the API's verbs), ssa.py
    (server-side apply field ownership), quantity.py (Kubernetes quantities), karpenter.py (NodePool
    provisioning), controlkit.py (clock, events, pod creation through admission, shared by the controllers),
    jobcontroller.py and deploycontroller.py (the controllers' halves), helm.py (the Prefect charts' objects),
    docsteps.py (docs/cluster.md as commands). Not written yet: kubelet.py and images.py.

Hooks between them: the store calls ``admit_pod(namespace, pod) -> str | None`` (None: admitted, else the
API server's Forbidden message) for every pod before it is stored, and controllers that create pods record
a refusal as a ``FailedCreate`` event on the owner, as kube-controller-manager does. The scheduler is called
by the twin's scheduling loop for every pod without ``spec.nodeName``.
"""
