"""``shipyard cluster check``: a read-only preflight of the cluster(s) a cluster run will use."""

from __future__ import annotations

import argparse
from typing import Any

from shipyard.cli.runtime import choose_prefect_api
from shipyard.errors import ConfigError
from shipyard.settings import Settings, load_settings


def register(sub: Any) -> None:
    """Add ``cluster`` and its ``check`` subcommand."""
    cluster = sub.add_parser("cluster", help="check the EKS cluster(s) before a cluster run",
                             description="Commands about the cluster path (docs/cluster.md).")
    verbs = cluster.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    check = verbs.add_parser(
        "check", help="read-only preflight: access, Pod Security, nodes and GPUs, room, workers, MLflow, images",
        description="Ask the current kube context (and the inference cluster's, SHIPYARD_INFERENCE_KUBECONFIG and "
        "SHIPYARD_INFERENCE_KUBE_CONTEXT, in the dedicated topology) whether a pipeline run would get through: "
        "an access review per API request each component makes, as its service account; the pods Shipyard "
        "creates against the namespace's Pod Security admission (dryRun); nodes and Karpenter NodePools for "
        "every pod, GPUs and the device plugin, room for the inference replicas plus surge; a worker polling "
        "each work pool (SHIPYARD_PREFECT_API_URL); MLflow answering through its Service; pinned images. "
        "Prints one line per problem, with its fix; exit 1 if there is any. Changes nothing.")
    check.add_argument("--context", help="kube context of the (training) cluster (default: the current one)")
    check.set_defaults(func=cmd_check)


def _online_workers(settings: Settings) -> Any:
    """Return a lookup of each work pool's online workers on the Prefect server (None: no such pool)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound

    def online(pool: str) -> list[str] | None:
        with get_client(sync_client=True) as client:
            try:
                workers = client.read_workers_for_work_pool(pool)
            except ObjectNotFound:
                return None
        return [w.name for w in workers if w.status == WorkerStatus.ONLINE]

    return online


def cmd_check(args: argparse.Namespace) -> int:
    """Run the preflight and print one line per problem."""
    settings = load_settings()
    if choose_prefect_api(settings) is None:
        raise ConfigError("no Prefect server to ask about workers: set SHIPYARD_PREFECT_API_URL "
                          "(docs/cluster.md step 7's port-forward)")
    from deployments.plan import cluster_plan
    from shipyard.kube.client import client, translate
    from shipyard.kube.preflight import Target, check

    plan = cluster_plan(settings)
    namespace = settings.kube_namespace
    training = client(namespace, context=args.context)
    if plan.topology == "unified":
        targets = [Target(args.context or "current context", training, ("training", "inference"))]
    else:
        inference = client(namespace, kubeconfig=settings.inference_kubeconfig,
                           context=settings.inference_kube_context)
        targets = [Target(args.context or "current context", training, ("training",)),
                   Target(settings.inference_kube_context or "inference cluster", inference, ("inference",))]
    with translate("answer the preflight's reviews and lists"):
        problems = check(targets, plan, _online_workers(settings))
    for problem in problems:
        print(problem.line())
    if problems:
        print(f"cluster check: {len(problems)} problem(s) ({plan.topology} topology)")
        return 1
    print(f"cluster check passed ({plan.topology} topology): access, Pod Security, nodes, room, workers "
          f"({', '.join(plan.work_pools)}), MLflow and images")
    return 0
