"""Follow docs/cluster.md's steps, as written, against twin clusters.

``walk(topology)`` runs every command of the unified section, or of the dedicated section (after steps 1-2 and
before 6-8, which it runs from the unified section against the training context, as the doc says). Each command
becomes what it does to a cluster:

    eksctl create cluster -f F   a new cluster (Store) named by F's metadata.name: its managed node groups' nodes,
                                 the NVIDIA device plugin DaemonSet eksctl installs for GPU groups, the IRSA
                                 ServiceAccounts of ``iam.serviceAccounts`` (and their namespace); the new
                                 context becomes current (as eksctl writes the kubeconfig)
    kubectl apply -f F...        the files' objects, envsubst'd with the step's variables, server-side applied
                                 with admission, in the context named by --context (else the current one)
    kubectl create secret        a Secret; kubectl config rename-context: the context renamed
    helm install R prefect/C     the chart's objects, rendered with its naming rules (tests/twin/helm.py)
    shipyard ... / prefect ...   recorded in ``shipyard`` for the test to run (with the exported variables)

After each step the controllers settle (tests/twin/controllers.py): Deployments make ReplicaSets and pods through
admission, the scheduler places them on the modelled nodes; a refused or unschedulable pod fails the walk.

Outside the twin, recorded in ``outside`` and not followed: AWS APIs (aws ...), image builds and pushes
(docker ...), helm repo, port-forwards, and ``kubectl rollout status`` / ``get`` (the pods never run: the twin
has no kubelet yet). A command of any other kind fails the walk: a doc step the walker cannot follow.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.infra import EXAMPLE_VALUES, REPO, substitute
from tests.twin import helm
from tests.twin.controllers import ControllerManager
from tests.twin.docsteps import Command, Step, section
from tests.twin.nodes import eksctl_device_plugin, nodes_from_infra
from tests.twin.store import Store

ACCOUNT = "123456789012"
OUTSIDE_KINDS = ("aws-", "docker-", "helm-repo", "kubectl-port-forward", "kubectl-rollout", "kubectl-get",
                 "kubectl-config-current-context")


class CannotFollow(AssertionError):
    """A doc command the walker does not know how to follow: the doc or the walker is wrong."""


@dataclass
class Walk:
    """The clusters the doc built, its kube contexts, the variables it exported, and what it left to run."""

    clusters: dict[str, Store] = field(default_factory=dict)
    contexts: dict[str, str] = field(default_factory=dict)  # context -> cluster name
    current: str = ""
    env: dict[str, str] = field(default_factory=dict)
    shipyard: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (context, argv)
    outside: list[str] = field(default_factory=list)
    followed: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # Secrets' --from-file contents by path (read later)
    workdir: str = str(REPO)  # the shell's $PWD

    def store(self, context: str | None = None) -> Store:
        return self.clusters[self.contexts[context or self.current]]


def _values(walk: Walk, extra: dict[str, str]) -> dict[str, str]:
    return {**EXAMPLE_VALUES, **walk.env, **extra}


def _context_flag(argv: tuple[str, ...]) -> str | None:
    return next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--context"), None)


def _apply_file(walk: Walk, path: str, values: dict[str, str], context: str | None) -> None:
    text = (REPO / path).read_text()
    docs = [d for d in yaml.safe_load_all(substitute(text, values)) if d]
    walk.store(context).apply_manifests(docs)


def _create_cluster(walk: Walk, path: str, values: dict[str, str]) -> None:
    config = yaml.safe_load(substitute((REPO / path).read_text(), values))
    name = config["metadata"]["name"]
    store = Store()
    for node in nodes_from_infra(config):
        store.put("nodes", node)
    plugin = eksctl_device_plugin(config)
    if plugin is not None:
        store.put("daemonsets", plugin)
    for account in (config.get("iam") or {}).get("serviceAccounts") or []:
        # eksctl creates each IRSA ServiceAccount (and its namespace), annotated with the role it assumes.
        meta = account["metadata"]
        if store.get("namespaces", "", meta["namespace"]) is None:
            store.put("namespaces", {"metadata": {"name": meta["namespace"]}})
        role = f"arn:aws:iam::{ACCOUNT}:role/{account['roleName']}"
        store.put("serviceaccounts", {"metadata": {"name": meta["name"], "namespace": meta["namespace"],
                                                   "annotations": {"eks.amazonaws.com/role-arn": role}}})
    walk.clusters[name] = store
    context = f"admin@{name}.{config['metadata'].get('region', 'us-west-2')}.eksctl.io"
    walk.contexts[context] = name
    walk.current = context


def _follow(walk: Walk, command: Command) -> None:
    argv, kind = command.argv, command.kind
    prefix = dict(part.split("=", 1) for part in shlex.split(command.text.split("envsubst")[0])
                  if "=" in part) if command.files and "envsubst" in command.text else {}
    values = _values(walk, prefix)
    if kind in ("set-variable", "aws-query"):
        for assignment in _assignments(command.text):
            name, _, value = assignment.partition("=")
            value = _expand(_query(walk, value), values).replace("$PWD", walk.workdir)
            walk.env[name] = _aws_answer(name) if kind == "aws-query" else value
        return
    if kind == "shell-set" or any(kind.startswith(k) for k in OUTSIDE_KINDS) or kind == "aws-loop":
        walk.outside.append(command.text)
        return
    if kind == "eksctl-create-cluster":
        _create_cluster(walk, command.files[0], values)
    elif kind == "kubectl-apply":
        for path in command.files:
            _apply_file(walk, path, values, _context_flag(argv))
    elif kind == "kubectl-config-rename-context":
        new = argv[-1]
        walk.contexts[new] = walk.contexts.pop(walk.current)
        walk.current = new
    elif kind == "kubectl-create" and argv[argv.index("create") + 1] == "secret":
        _create_secret(walk, argv)
    elif kind == "helm-install":
        words = [a for a in argv[2:] if not a.startswith("-")]
        release, chart = words[0], words[1].split("/")[-1]
        namespace = argv[argv.index("-n") + 1]
        values_file = REPO / argv[argv.index("-f") + 1]
        walk.store(_context_flag(argv)).apply_manifests(helm.install(release, chart, namespace, values_file))
    elif kind.startswith("shipyard-") or kind.startswith("prefect-"):
        walk.shipyard.append((walk.current, argv))
    else:
        raise CannotFollow(f"docs/cluster.md: the walker cannot follow {command.text!r} (kind {kind})")
    walk.followed.append(command.text)


def _expand(value: str, values: dict[str, str]) -> str:
    out = value
    for name in sorted(values, key=len, reverse=True):
        out = out.replace(f"${name}", values[name]).replace(f"${{{name}}}", values[name])
    return out


def _assignments(text: str) -> list[str]:
    """Return ``NAME=value`` words of an (export) assignment; a ``$(...)`` value stays one word."""
    body = text.removeprefix("export ")
    if "$(" in body:
        return [body]
    return shlex.split(body)


_JSONPATH_LB = re.compile(r"\$\(kubectl (?P<args>[^)]*get svc[^)]*loadBalancer[^)]*)\)")


def _query(walk: Walk, value: str) -> str:
    """Answer a ``$(kubectl ... get svc NAME -o jsonpath=...loadBalancer...)`` in a value.

    The hostname is the AWS Load Balancer Controller's (outside the twin): internal-<svc>-<id>.elb.<region>...;
    the Service must exist in the context the command names, as the doc created it.
    """
    match = _JSONPATH_LB.search(value)
    if match is None:
        return value
    argv = shlex.split(match["args"])
    words = [a for a in argv if not a.startswith("-") and not a.startswith("{")]
    name, namespace = words[words.index("svc") + 1], argv[argv.index("-n") + 1]
    service = walk.store(_context_flag(tuple(argv))).get("services", namespace, name)
    if service is None or service["spec"].get("type") != "LoadBalancer":
        raise CannotFollow(f"docs/cluster.md asks for the load balancer of service {namespace}/{name}, "
                           "which is not a LoadBalancer Service in that cluster")
    host = f"internal-{name}-0123456789.elb.us-west-2.amazonaws.com"
    return value[:match.start()] + host + value[match.end():]


def _aws_answer(name: str) -> str:
    """What an AWS query the doc assigns returns, for the names the doc uses (the account; VPC ids)."""
    return {"AWS_ACCOUNT": ACCOUNT}.get(name, f"{name.lower()}-from-aws")


def _create_secret(walk: Walk, argv: tuple[str, ...]) -> None:
    words = [a for a in argv if not a.startswith("-")]
    name = words[words.index("generic") + 1]
    namespace = argv[argv.index("-n") + 1]
    data: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--from-literal="):
            key, _, value = arg.removeprefix("--from-literal=").partition("=")
            data[key] = value
        elif arg.startswith("--from-file="):
            key, _, path = arg.removeprefix("--from-file=").partition("=")
            data[key] = walk.files.get(path, f"<contents of {path}>")
    walk.store(_context_flag(argv)).create("secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque", "stringData": data})


def _settle(walk: Walk) -> None:
    for store in walk.clusters.values():
        ControllerManager(store).settle()
        events = store.listing("events", None)["items"]
        refused = [e for e in events if e.get("reason") in ("FailedCreate", "FailedScheduling")]
        if refused:
            raise AssertionError("docs/cluster.md: " + "; ".join(
                f"{e['involvedObject']['kind']} {e['involvedObject']['name']}: {e['reason']}: {e['message']}"
                for e in refused))


def _run(walk: Walk, steps: list[Step]) -> None:
    for step in steps:
        for command in step.commands:
            _follow(walk, command)
        _settle(walk)


def walk(topology: str, workdir: str = str(REPO)) -> Walk:
    """Follow the doc for ``topology`` ('unified' or 'dedicated') in the shell directory ``workdir``."""
    out = Walk(workdir=workdir)
    unified = section("Unified")
    setup = section("0. Tools")
    _run(out, setup)
    if topology == "unified":
        _run(out, unified)
        return out
    before = [s for s in unified if s.number in (1, 2)]
    after = [s for s in unified if s.number in (6, 7, 8)]
    _run(out, before)
    _run(out, section("Dedicated"))
    out.current = "shipyard-train"  # "Steps 6 to 8 as above, against the shipyard-train context"
    _run(out, after)
    return out


def kubeconfig_contexts(walk: Walk, servers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return one kubeconfig with the walk's contexts, each pointing at its cluster's twin kubeconfig."""
    clusters, users, contexts = [], [], []
    for context, cluster in walk.contexts.items():
        config = servers[cluster]
        clusters.append({"name": cluster, "cluster": config["clusters"][0]["cluster"]})
        users.append({"name": f"admin-{cluster}", "user": config["users"][0]["user"]})
        contexts.append({"name": context, "context": {"cluster": cluster, "user": f"admin-{cluster}"}})
    return {"apiVersion": "v1", "kind": "Config", "current-context": walk.current, "clusters": clusters,
            "users": users, "contexts": contexts}


__all__ = ["CannotFollow", "Walk", "kubeconfig_contexts", "walk"]
