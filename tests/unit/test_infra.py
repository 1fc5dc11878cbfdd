"""Infrastructure files validate strictly against their official schemas and agree with each other."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.infra import CLUSTER_CONFIGS, INFRA, kubernetes_manifests, kubernetes_version, load_all
from tests.unit.test_kube_job_template import TYPICAL, render

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "schemas"
CLUSTER_SCHEMA = "eksctl-clusterconfig-v1alpha5.schema.json"
# Each Helm values file and the chart schema it is validated against.
VALUES_SCHEMAS = {"prefect-worker-": "prefect-worker-values.schema.json",
                  "prefect-server.": "prefect-server-values.schema.json"}
UNIFIED, DEDICATED_TRAIN, DEDICATED_INFERENCE = CLUSTER_CONFIGS


def _load_schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return loaded


def _errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def _cluster(path: Path) -> dict[str, Any]:
    return load_all(path)[0]


def _groups(path: Path) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in _cluster(path).get("managedNodeGroups", [])}


# ---------------------------------------------------------------- eksctl ClusterConfigs


@pytest.mark.parametrize("config", CLUSTER_CONFIGS, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_cluster_config_is_valid_eksctl(config: Path) -> None:
    assert _errors(_load_schema(CLUSTER_SCHEMA), _cluster(config)) == []


def test_a_mistyped_cluster_field_is_caught() -> None:
    cluster = _cluster(UNIFIED)
    cluster["managedNodeGroups"][1]["instanceTypess"] = ["g5.xlarge"]
    errors = _errors(_load_schema(CLUSTER_SCHEMA), cluster)
    assert any("instanceTypess" in e for e in errors)


def test_every_cluster_targets_one_version_kubernetes_validate_knows() -> None:
    assert kubernetes_version() in kubernetes_validate.utils.all_versions()
    assert {f"{_cluster(c)['metadata']['version']}.0" for c in CLUSTER_CONFIGS} == {kubernetes_version()}
    assert len({_cluster(c)["metadata"]["region"] for c in CLUSTER_CONFIGS}) == 1


def test_the_unified_cluster_trains_and_serves() -> None:
    groups = _groups(UNIFIED)
    assert groups["system"]["labels"] == {"role": "system"}
    assert groups["inference"]["labels"] == {"role": "inference"}
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in groups["inference"]["taints"]
    assert "karpenter" in _cluster(UNIFIED)


def test_the_dedicated_topology_splits_training_and_inference_into_peerable_clusters() -> None:
    train, inference = _cluster(DEDICATED_TRAIN), _cluster(DEDICATED_INFERENCE)
    assert train["metadata"]["name"] != inference["metadata"]["name"]
    assert set(_groups(DEDICATED_TRAIN)) == {"system"} and "karpenter" in train
    assert set(_groups(DEDICATED_INFERENCE)) == {"system", "inference"} and "karpenter" not in inference
    cidrs = [ipaddress.ip_network(c["vpc"]["cidr"]) for c in (train, inference)]
    assert not cidrs[0].overlaps(cidrs[1])  # VPC peering needs disjoint ranges


def test_no_managed_node_group_holds_gpus_for_training() -> None:
    """Training capacity comes from Karpenter alone, from zero; a managed train group would keep nodes up."""
    for config in CLUSTER_CONFIGS:
        assert all(g["labels"].get("role") != "train" for g in _groups(config).values()), config.name


# ---------------------------------------------------------------- Helm values


def _values_files() -> list[Path]:
    return sorted((INFRA / "helm").glob("*.yaml"))


@pytest.mark.parametrize("values", _values_files(), ids=lambda p: p.name)
def test_helm_values_are_valid_against_their_chart_schema(values: Path) -> None:
    schema = next((s for prefix, s in VALUES_SCHEMAS.items() if values.name.startswith(prefix)), None)
    assert schema is not None, f"{values.name}: no chart schema under tests/schemas/ to validate it against"
    assert _errors(_load_schema(schema), yaml.safe_load(values.read_text())) == []


def test_worker_pools_match_the_settings_defaults() -> None:
    from shipyard.settings import Settings

    pools = {yaml.safe_load(p.read_text())["worker"]["config"]["workPool"]
             for p in (INFRA / "helm").glob("prefect-worker-*.values.yaml")}
    settings = Settings()
    assert pools == {settings.train_work_pool, settings.pipeline_work_pool}


# ---------------------------------------------------------------- Kubernetes manifests

KARPENTER_KINDS = {("karpenter.sh/v1", "NodePool"): "karpenter.sh_nodepools.yaml",
                   ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter.k8s.aws_ec2nodeclasses.yaml"}


def _strict(schema: Any) -> Any:
    """Refuse unknown fields wherever a CRD schema lists the fields (as the API server's strict decoding does)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@cache
def karpenter_schema(api_version: str, kind: str) -> dict[str, Any]:
    """Return the strict openAPIV3Schema of a Karpenter v1 CRD (tests/schemas/karpenter/)."""
    crd = yaml.safe_load((SCHEMAS / "karpenter" / KARPENTER_KINDS[(api_version, kind)]).read_text())
    version = next(v for v in crd["spec"]["versions"] if f"{crd['spec']['group']}/{v['name']}" == api_version)
    schema: dict[str, Any] = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return schema


def validate(document: dict[str, Any]) -> None:
    """Validate a manifest strictly: built-in kinds by kubernetes-validate, Karpenter's by its CRD schema."""
    key = (document["apiVersion"], document["kind"])
    if key in KARPENTER_KINDS:
        jsonschema.Draft7Validator(karpenter_schema(*key)).validate(document)
    else:
        kubernetes_validate.validate(document, kubernetes_version(), strict=True)


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.relative_to(INFRA)}:{d['kind']}/{d['metadata']['name']}", d)
            for p in kubernetes_manifests() for d in load_all(p)]


@pytest.mark.parametrize("name, document", _documents(), ids=[n for n, _ in _documents()])
def test_kubernetes_manifests_are_valid_in_strict_mode(name: str, document: dict[str, Any]) -> None:
    validate(document)


def test_strict_validation_rejects_an_unknown_field() -> None:
    role = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "x"},
            "value": 1, "preemptionPolicyy": "Never"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(role)


@pytest.mark.parametrize("path, value, complaint", [
    (("spec", "disruption", "consolidationPolicyy"), "WhenEmpty", "consolidationPolicyy"),
    (("spec", "disruption", "consolidationPolicy"), "Sometimes", "'Sometimes' is not one of"),
    (("spec", "template", "spec", "expireAfter"), "a month", "does not match"),
])
def test_karpenter_validation_rejects_unknown_fields_and_bad_values(path: tuple[str, ...], value: str,
                                                                    complaint: str) -> None:
    pool = copy.deepcopy(_karpenter("NodePool"))
    node = pool
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=complaint):
        validate(pool)


# ---------------------------------------------------------------- autoscaling for long jobs


def _karpenter(kind: str) -> dict[str, Any]:
    return next(d for d in load_all(INFRA / "karpenter" / "train.yaml") if d["kind"] == kind)


def test_karpenter_launches_gpu_nodes_the_training_job_lands_on() -> None:
    pool, pod = _karpenter("NodePool")["spec"], render(TYPICAL)["spec"]["template"]
    assert pod["spec"]["nodeSelector"].items() <= pool["template"]["metadata"]["labels"].items()
    for taint in pool["template"]["spec"]["taints"]:  # every taint of the pool is tolerated by the Job
        assert any(t["key"] == taint["key"] and t["effect"] == taint["effect"] for t in pod["spec"]["tolerations"])
    families = next(r for r in pool["template"]["spec"]["requirements"]
                    if r["key"] == "karpenter.k8s.aws/instance-family")
    assert families["operator"] == "In" and all(f.startswith(("g", "p")) for f in families["values"])
    assert "nvidia.com/gpu" in pool["limits"]


def test_karpenter_never_takes_a_node_from_under_a_running_training_job() -> None:
    pool, pod = _karpenter("NodePool")["spec"], render(TYPICAL)["spec"]["template"]
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    disruption = pool["disruption"]
    assert disruption["consolidationPolicy"] == "WhenEmpty" or disruption.get("budgets")
    # A terminationGracePeriod would let expiry or drift evict a do-not-disrupt pod once it passed.
    assert "terminationGracePeriod" not in pool["template"]["spec"]


@pytest.mark.parametrize("config", [UNIFIED, DEDICATED_TRAIN], ids=["unified", "dedicated"])
def test_the_node_class_matches_what_eksctl_creates_for_the_cluster(config: Path) -> None:
    name = _cluster(config)["metadata"]["name"]
    node_class = next(d for d in load_all(INFRA / "karpenter" / "train.yaml", {"SHIPYARD_CLUSTER": name})
                      if d["kind"] == "EC2NodeClass")["spec"]
    assert node_class["role"] == f"eksctl-KarpenterNodeRole-{name}"
    assert node_class["subnetSelectorTerms"][0]["tags"]["karpenter.sh/discovery"] == name
    assert _cluster(config)["metadata"]["tags"]["karpenter.sh/discovery"] == name
    assert node_class["metadataOptions"]["httpPutResponseHopLimit"] == 1  # pods cannot borrow the node's role


# ---------------------------------------------------------------- MLflow on the cluster

IN_CLUSTER_NAMES = ("mlflow", "mlflow.shipyard", "mlflow.shipyard.svc", "mlflow.shipyard.svc.cluster.local")


def _mlflow(kind: str, name: str = "mlflow") -> dict[str, Any]:
    return next(d for d in load_all(INFRA / "k8s" / "mlflow.yaml")
                if d["kind"] == kind and d["metadata"]["name"] == name)


def _args(container: dict[str, Any]) -> dict[str, str]:
    return dict(a.removeprefix("--").partition("=")[::2] for a in container["args"] if a.startswith("--"))


def test_mlflow_serves_in_cluster_names_with_postgresql_and_s3() -> None:
    pod = _mlflow("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args, env = _args(container), {e["name"]: e for e in container["env"]}
    hosts = set(args["allowed-hosts"].split(","))
    assert {h for n in IN_CLUSTER_NAMES for h in (n, f"{n}:5000")} <= hosts
    assert 1 <= int(args["workers"]) <= 4 and args["artifacts-destination"].startswith("s3://")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri.startswith("postgresql://mlflow:$(MLFLOW_DB_PASSWORD)@mlflow-db.shipyard.svc.cluster.local:5432/")
    assert env["MLFLOW_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "password"}
    assert "backend-store-uri" not in args  # a password on the command line shows in every process list
    assert _mlflow("Service", "mlflow-db")["spec"]["selector"] == \
        _mlflow("StatefulSet", "mlflow-db")["spec"]["template"]["metadata"]["labels"]
    assert _mlflow("Service")["spec"]["ports"][0]["port"] == 5000


def test_mlflow_and_its_database_run_on_the_system_group_of_each_training_cluster() -> None:
    for kind, name in (("Deployment", "mlflow"), ("StatefulSet", "mlflow-db")):
        selector = _mlflow(kind, name)["spec"]["template"]["spec"]["nodeSelector"]
        for config in (UNIFIED, DEDICATED_TRAIN):
            assert selector == _groups(config)["system"]["labels"], (name, config.name)


def test_no_secret_is_committed_under_infra() -> None:
    assert [n for n, d in _documents() if d["kind"] == "Secret"] == []
    for _, document in _documents():
        for pod in ([document["spec"]["template"]["spec"]] if "template" in document.get("spec", {}) else []):
            for container in pod.get("containers", []):
                for variable in container.get("env", []):
                    if any(w in variable["name"] for w in ("PASSWORD", "SECRET", "TOKEN")):
                        assert "valueFrom" in variable, variable["name"]


def test_the_inference_cluster_reaches_mlflow_through_an_internal_load_balancer_only() -> None:
    service = load_all(INFRA / "k8s" / "dedicated" / "mlflow-internal.yaml")[0]
    assert service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true"
    assert service["spec"]["selector"] == _mlflow("Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["loadBalancerSourceRanges"] == [_cluster(DEDICATED_INFERENCE)["vpc"]["cidr"]]
    hosts = _args(_mlflow("Deployment")["spec"]["template"]["spec"]["containers"][0])["allowed-hosts"].split(",")
    region = _cluster(DEDICATED_TRAIN)["metadata"]["region"]
    assert f"*.elb.{region}.amazonaws.com:5000" in hosts  # the load balancer's DNS name, as the Host header


@pytest.mark.parametrize("values", _values_files(), ids=lambda p: p.name)
def test_helm_releases_run_on_the_system_group(values: Path) -> None:
    document = yaml.safe_load(values.read_text())
    component = document.get("worker") or document["server"]
    assert component["nodeSelector"] == _groups(UNIFIED)["system"]["labels"]
    assert "password" not in json.dumps(document).lower()  # given at install time, never committed


def test_the_docs_fill_in_every_placeholder_of_each_file_they_apply() -> None:
    """`envsubst '$A'` leaves any other ${B} as it is: each command must name exactly its file's placeholders."""
    docs = (REPO / "docs" / "cluster.md").read_text()
    commands = re.findall(r"envsubst '([^']*)' < (\S+)", docs)
    templated = {p.relative_to(REPO).as_posix(): set(re.findall(r"\$\{([A-Z_]+)\}", p.read_text()))
                 for p in INFRA.rglob("*") if p.is_file() and "${" in p.read_text() and p.suffix in {".yaml", ".json"}
                 and p.parent.name != "iam"}
    assert {path for _, path in commands} == set(templated)
    for names, path in commands:
        assert set(re.findall(r"\$([A-Z_]+)", names)) == templated[path], path
