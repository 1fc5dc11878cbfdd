"""IAM policies allow each role exactly the store prefixes its code reads and writes, and nothing wider.

The prefixes come from the functions that compute them (``object_key``, ``manifest_key``,
``training_prefix``, ``checkpoint_prefix``, the registry's artifact location), applied to a real ``Store``
for an S3 URI, so a change in the store layout fails here before it fails on a cluster with AccessDenied.
A small evaluator answers "does this policy allow action A on resource R" the way IAM does for
identity policies without conditions: a matching Deny wins, else any matching Allow, else denied.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments import DEPLOYMENTS
from deployments.job_template import load
from shipyard.datasets.manifest import manifest_key, object_key
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.registry import ensure_experiment
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem
from shipyard.training.trainer import (
    TrainResult,
    _index_parts,
    checkpoint_prefix,
    inputs_key,
    training_key,
    training_prefix,
)
from tests.infra import CLUSTER_CONFIGS, EXAMPLE_VALUES, INFRA, load_all, substitute

IAM = INFRA / "iam"
BUCKET = EXAMPLE_VALUES["SHIPYARD_BUCKET"]
STORE_URI = f"s3://{BUCKET}/shipyard"  # docs/cluster.md: SHIPYARD_STORE_URI=s3://$SHIPYARD_BUCKET/shipyard
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
GET, PUT, DELETE, ABORT, LIST = "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", \
    "s3:ListBucket"
# Object actions a role could be given by mistake; each must be allowed exactly where the code needs it.
OBJECT_ACTIONS = (GET, PUT, DELETE, ABORT, "s3:GetObjectAcl", "s3:PutObjectAcl", "s3:PutObjectTagging",
                  "s3:DeleteObjectVersion", "s3:GetObjectVersion", "s3:RestoreObject")
BUCKET_ACTIONS = (LIST, "s3:ListBucketVersions", "s3:ListBucketMultipartUploads", "s3:PutBucketPolicy",
                  "s3:DeleteBucket", "s3:PutLifecycleConfiguration", "s3:PutBucketAcl")
# service account -> (policy file, IAM role name)
ROLES = {"shipyard-train": ("shipyard-train.json", "shipyard-train"),
         "prefect-worker": ("shipyard-pipeline.json", "shipyard-prefect-worker"),
         "mlflow": ("shipyard-mlflow.json", "shipyard-mlflow")}

# ---------------------------------------------------------------- a tiny IAM evaluator


def _glob(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """Match IAM's wildcards: ``*`` any run of characters (slashes included), ``?`` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def allows(policy: dict[str, Any], action: str, resource: str) -> bool:
    """Tell whether an identity policy allows ``action`` on ``resource`` (explicit Deny wins)."""
    allowed = False
    for statement in policy["Statement"]:
        unsupported = {"Condition", "NotAction", "NotResource", "Principal"} & set(statement)
        assert not unsupported, f"the test's evaluator does not model {unsupported}: extend it first"
        if any(_glob(a, action, ignore_case=True) for a in _listed(statement["Action"])) and \
                any(_glob(r, resource) for r in _listed(statement["Resource"])):
            if statement["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


def test_the_evaluator_matches_iam_wildcards_and_deny() -> None:
    policy = {"Statement": [
        {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/p/*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/p/secret?"}]}
    assert allows(policy, "S3:GETOBJECT", "arn:aws:s3:::b/p/deep/er/key")  # actions are case-insensitive
    assert not allows(policy, "s3:GetObject", "arn:aws:s3:::b/p/secret1")  # deny wins
    assert allows(policy, "s3:GetObject", "arn:aws:s3:::b/p/secret12")  # ? is exactly one character
    assert not allows(policy, "s3:GetObject", "arn:aws:s3:::b/P/x")  # resources are case-sensitive
    assert not allows(policy, "s3:PutObject", "arn:aws:s3:::b/p/x")
    assert not allows(policy, "s3:GetObject", "arn:aws:s3:::b/px")

# ---------------------------------------------------------------- what the code touches


@cache
def _store() -> Store:
    return filesystem(Settings(store_uri=STORE_URI))


def _arn(*parts: str) -> str:
    return f"arn:aws:s3:::{_store().path(*parts)}"


class _RecordingMlflow:
    """Just enough of MlflowClient for ensure_experiment: remembers where artifacts were put."""

    artifact_location: str | None = None

    def get_experiment_by_name(self, name: str) -> None:
        return None

    def create_experiment(self, name: str, artifact_location: str | None = None) -> str:
        self.artifact_location = artifact_location
        return "1"


def mlflow_artifact_root() -> str:
    """Return where Shipyard keeps MLflow artifacts in the store (the registry's own choice)."""
    client = _RecordingMlflow()
    ensure_experiment(client, Settings(store_uri=STORE_URI), _store())
    assert client.artifact_location is not None
    return client.artifact_location


SHA = "ab" * 32
DATASET, VERSION = "digits", "0123456789abcdef"
KEY = training_key(DatasetRef(name=DATASET, version=VERSION), TrainParams())


def _needs() -> dict[str, set[tuple[str, str]]]:
    """Return, per service account, the (action, resource) pairs its pods perform (comments say where)."""
    objects, manifest = _arn(*object_key(SHA)), _arn(*manifest_key(DATASET, VERSION))
    result = _arn(*training_prefix(KEY), "result.json")
    model = f"arn:aws:s3:::{_store().path(*TrainResult.model_parts(_result_stub()))}"
    checkpoint = _arn(*checkpoint_prefix(KEY), "00000042.pt")
    # plan_training reads (and the trainer writes) the code-hash index of these data and params.
    index = _arn(*_index_parts(inputs_key(DatasetRef(name=DATASET, version=VERSION), TrainParams())))
    # register_model: create-only leases and claims around version creation and alias moves, the alias history.
    registry = _arn("registry", "digits-classifier", "aliases", "1.lease")
    # roll_out: the model's rollout lease (pipelines of one model roll out in turn); fit_model: the training claim.
    rollout_turn = _arn("registry", "digits-classifier", "rollout", "1.beat-1")
    claim = _arn(*checkpoint_prefix(KEY)[:-1], "claims", "1.lease")
    artifact = "arn:aws:s3:::" + mlflow_artifact_root().removeprefix("s3://") + "/1/run/artifacts/model/MLmodel"
    # ListBucket on the bucket: Store.check lists it before staging, Store.list lists prefixes, and S3 answers a
    # HEAD of a missing key with 404 (which create-only writes and cache checks rely on) only to ListBucket holders.
    listing = {(LIST, BUCKET_ARN)}
    return {
        # stage_dataset: HEAD, create-only PUT or multipart (abort on failure), read-back verification, delete a
        # corrupted upload, manifest written last; launch_training reads result.json; register_model the weights.
        "prefect-worker": listing | {(a, objects) for a in (GET, PUT, ABORT, DELETE)}
        | {(GET, manifest), (PUT, manifest), (GET, result), (GET, model), (GET, index)}
        | {(GET, registry), (PUT, registry), (GET, rollout_turn), (PUT, rollout_turn)},
        # fit_model: pull the manifest and its objects; checkpoints, weights and result.json under training/.
        "shipyard-train": listing | {(GET, objects), (GET, manifest)}
        | {(a, k) for a in (GET, PUT, ABORT) for k in (checkpoint, model, result, index, claim)},
        # The MLflow server proxies every artifact upload, download, listing and deletion.
        "mlflow": listing | {(a, artifact) for a in (GET, PUT, DELETE, ABORT)},
    }


def _result_stub() -> Any:
    class Stub:
        key = KEY

    return Stub()


def _probes() -> list[str]:
    """Object ARNs in every area of the store, at its root, outside its prefix, and in another bucket."""
    needed = {r for pairs in _needs().values() for _, r in pairs if r != BUCKET_ARN}
    return sorted(needed | {_arn("secrets.json"), f"{BUCKET_ARN}/other-app/objects/x",
                            f"arn:aws:s3:::other-bucket/shipyard/objects/{SHA[:2]}/{SHA}"})


@cache
def policy(service_account: str) -> dict[str, Any]:
    """Return a role's policy document with the bucket filled in as `envsubst` fills it."""
    loaded: dict[str, Any] = json.loads(substitute((IAM / ROLES[service_account][0]).read_text()))
    return loaded

# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("service_account", sorted(ROLES))
def test_each_role_is_allowed_everything_its_code_does(service_account: str) -> None:
    denied = [(a, r) for a, r in sorted(_needs()[service_account]) if not allows(policy(service_account), a, r)]
    assert denied == []


@pytest.mark.parametrize("service_account", sorted(ROLES))
def test_each_role_is_allowed_nothing_else(service_account: str) -> None:
    needs = _needs()[service_account]
    wider = [(a, r) for a in OBJECT_ACTIONS for r in _probes()
             if allows(policy(service_account), a, r) and (a, r) not in needs]
    wider += [(a, b) for a in BUCKET_ACTIONS for b in (BUCKET_ARN, "arn:aws:s3:::other-bucket")
              if allows(policy(service_account), a, b) and (a, b) not in needs]
    assert wider == []


def static_problems(document: dict[str, Any]) -> list[str]:
    """Return what makes a policy wider than S3 object and bucket actions on the store bucket."""
    problems = [] if document.get("Version") == "2012-10-17" else ["Version is not 2012-10-17"]
    for statement in document["Statement"]:
        for action in _listed(statement["Action"]):
            if "*" in action or not action.startswith("s3:"):
                problems.append(f"{statement.get('Sid')}: action {action}")
        for resource in _listed(statement["Resource"]):
            if not (resource == BUCKET_ARN or resource.startswith(f"{BUCKET_ARN}/shipyard/")):
                problems.append(f"{statement.get('Sid')}: resource {resource}")
    return problems


@pytest.mark.parametrize("service_account", sorted(ROLES))
def test_no_wildcard_actions_and_no_resource_outside_the_store(service_account: str) -> None:
    assert static_problems(policy(service_account)) == []


def test_a_widened_policy_is_caught() -> None:
    wide = json.loads(json.dumps(policy("shipyard-train")))
    wide["Statement"].append({"Sid": "Oops", "Effect": "Allow", "Action": "s3:*", "Resource": "*"})
    assert static_problems(wide) == ["Oops: action s3:*", "Oops: resource *"]
    assert allows(wide, DELETE, _arn(*manifest_key(DATASET, VERSION)))


def test_the_mlflow_server_keeps_artifacts_where_the_registry_does() -> None:
    mlflow = next(d for d in load_all(INFRA / "k8s" / "mlflow.yaml") if d["kind"] == "Deployment")
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--artifacts-destination={mlflow_artifact_root()}" in args
    assert "--serve-artifacts" in args  # so only the server's role touches mlflow-artifacts/


# ---------------------------------------------------------------- wiring into the clusters


def _service_accounts(config: Path) -> dict[str, dict[str, Any]]:
    cluster = load_all(config)[0]
    return {sa["metadata"]["name"]: sa for sa in cluster.get("iam", {}).get("serviceAccounts", [])}


@pytest.mark.parametrize("config", CLUSTER_CONFIGS, ids=lambda p: str(p.relative_to(INFRA)))
def test_clusters_attach_exactly_the_policy_documents(config: Path) -> None:
    accounts = _service_accounts(config)
    for name, account in accounts.items():
        assert name in ROLES, f"{name} has an IAM role no test checks"
        assert "attachPolicyARNs" not in account and "wellKnownPolicies" not in account, name
        assert account["attachPolicy"] == policy(name), f"{name}: differs from infra/iam/{ROLES[name][0]}"
        assert account["roleName"] == ROLES[name][1] and account["metadata"]["namespace"] == "shipyard"
    assert "AmazonS3" not in config.read_text()


def test_the_training_side_of_each_topology_has_every_role_and_inference_none() -> None:
    assert set(_service_accounts(INFRA / "eks" / "cluster.yaml")) == set(ROLES)
    assert set(_service_accounts(INFRA / "eks" / "dedicated" / "training.yaml")) == set(ROLES)
    assert _service_accounts(INFRA / "eks" / "dedicated" / "inference.yaml") == {}


def test_pods_run_under_the_service_accounts_the_policies_are_for() -> None:
    assert load("gpu-train")["variables"]["properties"]["service_account_name"]["default"] == "shipyard-train"
    pipeline = next(d for d in DEPLOYMENTS if d.environment == "cluster" and d.flow_name == "pipeline-flow")
    assert pipeline.job_variables["service_account_name"] == "prefect-worker"
    mlflow = next(d for d in load_all(INFRA / "k8s" / "mlflow.yaml") if d["kind"] == "Deployment")
    assert mlflow["spec"]["template"]["spec"]["serviceAccountName"] == "mlflow"
    for values in (INFRA / "helm").glob("prefect-worker-*.values.yaml"):
        assert yaml.safe_load(values.read_text())["serviceAccount"]["name"] == "shipyard-worker"  # no AWS role


def test_the_endpoint_has_a_service_account_without_aws_or_api_credentials() -> None:
    accounts = [d for d in load_all(INFRA / "k8s" / "base.yaml")
                if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "shipyard-inference"]
    assert accounts == [{"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "shipyard-inference", "namespace": "shipyard"},
                         "automountServiceAccountToken": False}]
