"""Infrastructure files validate strictly against their official schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.infra import kubernetes_version

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "schemas"


def _load_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


def _errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_eks_cluster_config_is_valid_eksctl() -> None:
    cluster = yaml.safe_load((REPO / "infra" / "eks" / "cluster.yaml").read_text())
    assert _errors(_load_schema("eksctl-clusterconfig-v1alpha5.schema.json"), cluster) == []
    groups = {g["name"]: g for g in cluster["managedNodeGroups"]}
    assert groups["train"]["labels"] == {"role": "train"}
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in groups["train"]["taints"]
    assert groups["inference"]["labels"] == {"role": "inference"}


def test_the_cluster_targets_a_version_kubernetes_validate_knows() -> None:
    assert kubernetes_version() in kubernetes_validate.utils.all_versions()


def test_a_mistyped_cluster_field_is_caught() -> None:
    cluster = yaml.safe_load((REPO / "infra" / "eks" / "cluster.yaml").read_text())
    cluster["managedNodeGroups"][1]["instanceTypess"] = ["g5.xlarge"]
    errors = _errors(_load_schema("eksctl-clusterconfig-v1alpha5.schema.json"), cluster)
    assert any("instanceTypess" in e for e in errors)


WORKER_VALUES = sorted((REPO / "infra" / "helm").glob("prefect-worker-*.values.yaml"))


@pytest.mark.parametrize("values", WORKER_VALUES, ids=lambda p: p.name)
def test_prefect_worker_values_are_valid(values: Path) -> None:
    assert _errors(_load_schema("prefect-worker-values.schema.json"), yaml.safe_load(values.read_text())) == []


def test_worker_pools_match_the_settings_defaults() -> None:
    from shipyard.settings import Settings

    pools = {yaml.safe_load(p.read_text())["worker"]["config"]["workPool"]
             for p in (REPO / "infra" / "helm").glob("prefect-worker-*.values.yaml")}
    settings = Settings()
    assert pools == {settings.train_work_pool, settings.pipeline_work_pool}


@pytest.mark.parametrize("manifest", sorted((REPO / "infra" / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_are_valid_in_strict_mode(manifest: Path) -> None:
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_version(), strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    role = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "x"},
            "value": 1, "preemptionPolicyy": "Never"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, kubernetes_version(), strict=True)
