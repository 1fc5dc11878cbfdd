"""Facts about the infrastructure the tests validate against."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def kubernetes_version() -> str:
    """Return the Kubernetes version targeted: the EKS cluster's, as kubernetes-validate spells it."""
    cluster = yaml.safe_load((REPO / "infra" / "eks" / "cluster.yaml").read_text())
    return f"{cluster['metadata']['version']}.0"
