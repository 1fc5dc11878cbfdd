"""Facts about the infrastructure the tests validate against, and the helpers that read it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
# Every eksctl ClusterConfig: the unified topology's cluster and the dedicated topology's two.
CLUSTER_CONFIGS = (INFRA / "eks" / "cluster.yaml", INFRA / "eks" / "dedicated" / "training.yaml",
                   INFRA / "eks" / "dedicated" / "inference.yaml")
# Values the docs pass through `envsubst '$NAME ...'` before eksctl or kubectl reads a file.
EXAMPLE_VALUES = {"SHIPYARD_BUCKET": "example-ml-store", "SHIPYARD_REGISTRY": "123456789012.dkr.ecr.us-west-2"
                  ".amazonaws.com", "SHIPYARD_CLUSTER": "shipyard"}
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def kubernetes_version() -> str:
    """Return the Kubernetes version targeted: the EKS cluster's, as kubernetes-validate spells it."""
    cluster = yaml.safe_load((REPO / "infra" / "eks" / "cluster.yaml").read_text())
    return f"{cluster['metadata']['version']}.0"


def substitute(text: str, values: dict[str, str] | None = None) -> str:
    """Fill in ``${NAME}`` placeholders as ``envsubst`` does; an unknown name is an error, not an empty string."""
    known = EXAMPLE_VALUES if values is None else values

    def one(match: re.Match[str]) -> str:
        if match.group(1) not in known:
            raise KeyError(f"placeholder ${{{match.group(1)}}} has no value in tests/infra.py")
        return known[match.group(1)]

    return _PLACEHOLDER.sub(one, text)


def load_all(path: Path, values: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Return the YAML documents of an infra file with its placeholders filled in."""
    return [d for d in yaml.safe_load_all(substitute(path.read_text(), values)) if d]


def kubernetes_manifests() -> list[Path]:
    """Return every Kubernetes manifest file under infra/ (not ClusterConfigs, not Helm values)."""
    return sorted(p for p in INFRA.rglob("*.yaml") if p.parts[len(INFRA.parts)] in {"k8s", "karpenter"})


def pod_specs(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the pod spec of a workload object (Pod, Job, Deployment, StatefulSet, ...), if it has one."""
    if document.get("kind") == "Pod":
        yield document["spec"]
    elif "template" in document.get("spec", {}) and "spec" in document["spec"]["template"]:
        if "containers" in document["spec"]["template"]["spec"]:
            yield document["spec"]["template"]["spec"]
