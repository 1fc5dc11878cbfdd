"""The Kubernetes rollout target against a fake API server over HTTP with a fake Deployment controller.

The controller rolls pods the way a RollingUpdate does and marks a template that never gets ready as past
its progress deadline (one second here); the fake API server's service proxy answers for a ready pod with
that pod's pinned model version, so a smoke test shows which version the Service really reaches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import KubeConfig

from shipyard.errors import ConfigError, KubeError
from shipyard.kube import client
from shipyard.rollout.base import ModelRef
from shipyard.rollout.kubernetes import FIELD_MANAGER, KubernetesTarget
from shipyard.settings import Settings
from tests import fakedeploy, fakekube

NS = "shipyard"
NAME = "shipyard-inference"
EXAMPLE = [[0.0] * 4, [1.0] * 4]
V1, V2 = ModelRef(model_name="digits", version="1"), ModelRef(model_name="digits", version="2")


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"mlflow_tracking_uri": "http://mlflow.shipyard.svc:5000", "image": "shipyard:0.1.0",
                              "kube_namespace": NS, "inference_replicas": 2,
                              "inference_progress_deadline_seconds": 1, **overrides}
    return Settings(**values)


def version_answers(failing: dict[str, tuple[int, dict[str, Any]]] | None = None) -> fakekube.Backend:
    """Answer /invocations as the pod's pinned model version would: one prediction per row, naming the version."""
    def backend(pod: dict[str, Any], method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        version = pod["metadata"]["annotations"]["shipyard.dev/model-version"]
        if version in (failing or {}):
            return (failing or {})[version]
        assert (method, path) == ("POST", "/invocations")
        return 200, {"predictions": [f"v{version}"] * len(json.loads(body)["inputs"])}
    return backend


class Cluster:
    """One fake cluster: API server, Deployment controller, and a target talking to it."""

    def __init__(self, fake: fakekube.FakeKube, outcomes: dict[str, str]) -> None:
        self.fake, self.outcomes = fake, outcomes
        fake.backend = version_answers()

    def target(self, **overrides: Any) -> KubernetesTarget:
        lk = client(NS, KubeConfig.from_dict(self.fake.kubeconfig(NS)))
        return KubernetesTarget(settings(**overrides), lk, poll_seconds=0.05)

    def deployment(self) -> dict[str, Any] | None:
        return self.fake.get("deployments", NS, NAME)

    def pinned(self) -> str:
        deployment = self.deployment()
        assert deployment is not None
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][container["args"].index("--model-version") + 1] == \
            deployment["spec"]["template"]["metadata"]["labels"]["shipyard.dev/model-version"]
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["shipyard.dev/model-version"])


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    outcomes: dict[str, str] = {}
    with fakekube.serve() as fake, fakedeploy.controller(fake, fakedeploy.by_version(outcomes)):
        yield Cluster(fake, outcomes)


def test_a_rollout_becomes_available_and_the_service_answers_with_the_new_version(cluster: Cluster) -> None:
    target = cluster.target()
    assert target.live() is None
    first = target.roll_out(V1, EXAMPLE)
    assert first.previous is None and not first.reused and first.predictions == ["v1", "v1"]
    second = target.roll_out(V2, EXAMPLE)
    assert second.previous == V1 and second.model == V2 and second.predictions == ["v2", "v2"]
    assert cluster.pinned() == "2"
    live = target.live()
    assert live is not None and live.model == V2 and live.target == "kubernetes"
    assert live.detail["replicas"] == "2/2" and live.detail["context"] == "fake"
    assert live.detail["rollout"] == "deployment shipyard-inference successfully rolled out"
    assert live.endpoint == "http://shipyard-inference.shipyard.svc.cluster.local"
    # Service, PDB and Deployment, all applied server-side under Shipyard's own field manager.
    assert {(plural, manager, force) for plural, _, manager, force in cluster.fake.applies} == {
        ("services", FIELD_MANAGER, True), ("poddisruptionbudgets", FIELD_MANAGER, True),
        ("deployments", FIELD_MANAGER, True)}
    assert cluster.fake.get("services", NS, NAME) is not None
    assert cluster.fake.get("poddisruptionbudgets", NS, NAME) is not None


def test_rolling_out_the_live_version_again_changes_nothing(cluster: Cluster) -> None:
    target = cluster.target()
    target.roll_out(V1, None)
    generation = cluster.deployment()["metadata"]["generation"]  # type: ignore[index]
    again = target.roll_out(V1, EXAMPLE)
    assert again.reused and again.previous == V1 and again.predictions == ["v1", "v1"]
    assert cluster.deployment()["metadata"]["generation"] == generation  # type: ignore[index]


@pytest.mark.parametrize("outcome, reason", [
    ("unready", "exceeded its progress deadline (1s without progress): pod shipyard-inference-"),
    ("unready", "is not ready: Readiness probe failed: HTTP probe failed with statuscode: 503"),
    ("crash", "CrashLoopBackOff: back-off 40s restarting failed container=server"),
    ("crash", "(last exit code 1, Error: RegistryError: MLflow is unreachable)"),
    ("unschedulable", f"cannot be scheduled: {fakedeploy.UNSCHEDULABLE}"),
], ids=["deadline", "probe", "crash-loop", "crash-exit", "unschedulable"])
def test_a_version_that_never_gets_ready_is_rolled_back_with_the_pods_reason(
        cluster: Cluster, outcome: str, reason: str) -> None:
    target = cluster.target()
    target.roll_out(V1, EXAMPLE)
    cluster.outcomes["2"] = outcome
    with pytest.raises(KubeError) as caught:
        target.roll_out(V2, EXAMPLE)
    message = str(caught.value)
    assert reason in message and "\n" not in message
    assert message.endswith("rolled back to models:/digits/1")
    assert cluster.pinned() == "1"
    live = target.live()
    assert live is not None and live.model == V1 and live.detail["replicas"] == "2/2"
    # The Service reaches version 1 again, and only version 1.
    pods = cluster.fake.listing("pods", NS, "app.kubernetes.io/instance=shipyard-inference", None)["items"]
    assert {p["metadata"]["labels"]["shipyard.dev/model-version"] for p in pods} == {"1"}


def test_an_image_that_cannot_be_pulled_names_image_pull_back_off_and_the_old_image_serves(cluster: Cluster) -> None:
    cluster.target(image="registry.example/shipyard:0.1.0").roll_out(V1, EXAMPLE)
    broken = cluster.target(image="registry.example/shipyard:0.2.0-typo")
    cluster.outcomes["2"] = "pull"
    with pytest.raises(KubeError, match=r'ImagePullBackOff: Back-off pulling image "registry\.example/shipyard:'
                                        r'0\.2\.0-typo"') as caught:
        broken.roll_out(V2, EXAMPLE)
    assert "rolled back to models:/digits/1" in str(caught.value)
    deployment = cluster.deployment()
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/shipyard:0.1.0"
    assert cluster.pinned() == "1"


def test_a_failed_smoke_test_through_the_service_rolls_back_with_the_servers_answer(cluster: Cluster) -> None:
    cluster.fake.backend = version_answers({"2": (500, {"error_code": "INTERNAL_ERROR",
                                                        "message": "shape '[-1, 64]' is invalid for input of size 8"})})
    target = cluster.target()
    target.roll_out(V1, EXAMPLE)
    with pytest.raises(KubeError) as caught:
        target.roll_out(V2, EXAMPLE)
    message = str(caught.value)
    assert "smoke test through service shipyard/shipyard-inference got HTTP 500" in message
    assert "is invalid for input of size 8" in message and message.endswith("rolled back to models:/digits/1")
    assert cluster.pinned() == "1"
    assert target.roll_out(V1, EXAMPLE).predictions == ["v1", "v1"]


def test_a_first_rollout_that_fails_leaves_nothing_serving(cluster: Cluster) -> None:
    cluster.outcomes["1"] = "crash"
    target = cluster.target()
    with pytest.raises(KubeError, match=r"CrashLoopBackOff.*nothing was live before, so the deployment was deleted"):
        target.roll_out(V1, EXAMPLE)
    assert cluster.deployment() is None and target.live() is None


def test_credentials_in_the_tracking_uri_are_refused_before_anything_is_applied(cluster: Cluster) -> None:
    target = cluster.target(mlflow_tracking_uri="https://alice:s3cret@mlflow.example")
    with pytest.raises(ConfigError, match="SHIPYARD_MLFLOW_TRACKING_URI carries credentials") as caught:
        target.roll_out(V1, EXAMPLE)
    assert "s3cret" not in str(caught.value)
    assert cluster.fake.applies == []


def _kubeconfig(path: Path, clusters: dict[str, fakekube.FakeKube]) -> Path:
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "training",
              "clusters": [{"name": n, "cluster": {"server": f.url}} for n, f in clusters.items()],
              "users": [{"name": "ci", "user": {"token": "not-a-secret"}}],
              "contexts": [{"name": n, "context": {"cluster": n, "user": "ci"}} for n in clusters]}
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_dedicated_inference_cluster_is_chosen_by_kubeconfig_and_context(tmp_path: Path) -> None:
    with fakekube.serve() as training, fakekube.serve() as inference, \
            fakedeploy.controller(inference, fakedeploy.by_version({})):
        inference.backend = version_answers()
        config = _kubeconfig(tmp_path / "kubeconfig", {"training": training, "inference": inference})
        dedicated = KubernetesTarget(settings(inference_kubeconfig=config, inference_kube_context="inference"),
                                     poll_seconds=0.05)
        assert dedicated.roll_out(V1, EXAMPLE).predictions == ["v1", "v1"]
        assert inference.get("deployments", NS, NAME) is not None
        assert training.get("deployments", NS, NAME) is None and training.requests == []
        live = dedicated.live()
        assert live is not None and live.detail["context"] == "inference"
        # Unified: the same kubeconfig's current context, the training cluster's inference node group.
        unified = KubernetesTarget(settings(inference_kubeconfig=config), poll_seconds=0.05)
        assert unified.live() is None and training.requests


def test_an_unknown_kube_context_is_one_line_naming_the_known_ones(tmp_path: Path) -> None:
    with fakekube.serve() as fake:
        config = _kubeconfig(tmp_path / "kubeconfig", {"training": fake})
        target = KubernetesTarget(settings(inference_kubeconfig=config, inference_kube_context="inferense"))
        with pytest.raises(KubeError, match=r"kube context 'inferense' not found in .*kubeconfig \(known: training\)"):
            target.live()


def test_a_deployment_changed_by_another_rollout_meanwhile_is_left_alone(cluster: Cluster,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ours = cluster.target()
    ours.roll_out(V1, EXAMPLE)
    read = ours._read

    def read_then_another_pipeline_rolls_out_v3() -> Any:
        seen = read()
        cluster.target().roll_out(ModelRef(model_name="digits", version="3"), None)
        return seen

    monkeypatch.setattr(ours, "_read", read_then_another_pipeline_rolls_out_v3)
    with pytest.raises(KubeError, match="the object has been modified"):
        ours.roll_out(V2, EXAMPLE)
    assert cluster.pinned() == "3"  # neither overwritten by v2 nor "restored" to v1


def test_a_deployment_no_controller_ever_observes_fails_after_the_guard_and_is_removed() -> None:
    ticks = iter(range(0, 10**6, 100))  # each look at the clock is 100 s later: the guard, not a real wait
    with fakekube.serve() as fake:  # no controller: observedGeneration never catches up
        lk = client(NS, KubeConfig.from_dict(fake.kubeconfig(NS)))
        target = KubernetesTarget(settings(), lk, poll_seconds=0.01, clock=lambda: float(next(ticks)))
        with pytest.raises(KubeError, match=r"rollout of models:/digits/1 did not finish in time \(waiting for the "
                                            r"deployment spec update to be observed\).*deployment was deleted"):
            target.roll_out(V1, EXAMPLE)
        assert fake.get("deployments", NS, NAME) is None
