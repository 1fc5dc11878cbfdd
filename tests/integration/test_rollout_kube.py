"""The Kubernetes rollout target against a fake API server over HTTP with a fake Deployment controller.

The controller rolls pods the way a RollingUpdate does and marks a template that never gets ready as past
its progress deadline (one second here); the fake API server's service proxy answers for a ready pod with
that pod's pinned model version, so a smoke test shows which version the Service really reaches.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import KubeConfig

from shipyard.errors import ConfigError, KubeError
from shipyard.kube import client
from shipyard.kube import inference as manifests
from shipyard.rollout.base import ModelRef
from shipyard.rollout.kubernetes import FIELD_MANAGER, KubernetesTarget
from shipyard.settings import Settings
from tests import fakedeploy, fakekube
from tests.servers import free_port

NS = "shipyard"
NAME = "shipyard-inference"
WHERE = f"{NS}/{NAME}"
LOGGER = "shipyard.rollout.kubernetes"
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

    def failed_rollout(self) -> str:
        """Serve V1, then roll V2 out, which must fail; return the failure's message."""
        target = self.target()
        target.roll_out(V1, EXAMPLE)
        with pytest.raises(KubeError) as caught:
            target.roll_out(V2, EXAMPLE)
        return str(caught.value)

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


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """Return the rollout target's log lines (level, message)."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def failed(model: ModelRef) -> str:
    """Return how a failed rollout's message starts."""
    return f"rolling {model.uri} out to deployment {WHERE} failed: "


def test_a_rollout_becomes_available_and_the_service_answers_with_the_new_version(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
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
    # Each rollout names the version, the Deployment and the cluster; nothing to warn about.
    assert logged(caplog) == [(logging.INFO, f"rolling {v.uri} out to deployment {WHERE} (context fake)")
                              for v in (V1, V2)]


def test_rolling_out_the_live_version_again_changes_nothing(cluster: Cluster) -> None:
    target = cluster.target()
    target.roll_out(V1, None)
    generation = cluster.deployment()["metadata"]["generation"]  # type: ignore[index]
    again = target.roll_out(V1, EXAMPLE)
    assert again.reused and again.previous == V1 and again.predictions == ["v1", "v1"]
    assert cluster.deployment()["metadata"]["generation"] == generation  # type: ignore[index]
    # The same version on a new image is a new rollout of the Deployment, not a reuse.
    upgraded = cluster.target(image="shipyard:0.1.1").roll_out(V1, EXAMPLE)
    assert not upgraded.reused and upgraded.previous == V1 and upgraded.predictions == ["v1", "v1"]
    assert cluster.deployment()["metadata"]["generation"] == generation + 1  # type: ignore[index]


@pytest.mark.parametrize("outcome, reason", [
    ("unready", "exceeded its progress deadline (1s without progress): pod shipyard-inference-"),
    ("unready", "is not ready: Readiness probe failed: HTTP probe failed with statuscode: 503"),
    ("crash", "CrashLoopBackOff: back-off 40s restarting failed container=server"),
    ("crash", "(last exit code 1, Error: RegistryError: MLflow is unreachable)"),
    ("unschedulable", f"cannot be scheduled: {fakedeploy.UNSCHEDULABLE}"),
], ids=["deadline", "probe", "crash-loop", "crash-exit", "unschedulable"])
def test_a_version_that_never_gets_ready_is_rolled_back_with_the_pods_reason(
        cluster: Cluster, outcome: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    target = cluster.target()
    target.roll_out(V1, EXAMPLE)
    cluster.outcomes["2"] = outcome
    with pytest.raises(KubeError) as caught:
        target.roll_out(V2, EXAMPLE)
    message = str(caught.value)
    assert reason in message and "\n" not in message
    assert message.startswith(f"{failed(V2)}deployment {NAME} exceeded its progress deadline (1s without progress): ")
    assert message.endswith("; rolled back to models:/digits/1")
    assert (logging.WARNING, f"rolling deployment {WHERE} back to models:/digits/1") in logged(caplog)
    # The last good spec went back server-side, forced, under Shipyard's field manager (a kubectl edit meanwhile
    # must not block a rollback).
    assert cluster.fake.applies[-1] == ("deployments", NAME, FIELD_MANAGER, True)
    assert cluster.pinned() == "1"
    live = target.live()
    assert live is not None and live.model == V1 and live.detail["replicas"] == "2/2"
    # The Service reaches version 1 again, and only version 1.
    pods = cluster.fake.listing("pods", NS, "app.kubernetes.io/instance=shipyard-inference", None)["items"]
    assert {p["metadata"]["labels"]["shipyard.dev/model-version"] for p in pods} == {"1"}


def test_an_image_that_cannot_be_pulled_names_image_pull_back_off_and_the_old_image_serves(cluster: Cluster) -> None:
    cluster.target(inference_image="registry.example/shipyard:0.1.0").roll_out(V1, EXAMPLE)
    broken = cluster.target(inference_image="registry.example/shipyard:0.2.0-typo")
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


def test_a_first_rollout_that_fails_leaves_nothing_serving(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    cluster.outcomes["1"] = "crash"
    target = cluster.target()
    with pytest.raises(KubeError, match=r"CrashLoopBackOff") as caught:
        target.roll_out(V1, EXAMPLE)
    assert str(caught.value).endswith("; nothing was live before, so the deployment was deleted")
    assert cluster.deployment() is None and target.live() is None
    assert (logging.WARNING, f"deleted deployment {WHERE}: nothing was live before") in logged(caplog)


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
    looks: list[float] = []

    def clock() -> float:  # each look at the clock is a second later: the guard, not a real wait
        looks.append(float(len(looks)))
        return looks[-1]

    with fakekube.serve() as fake:  # no controller: observedGeneration never catches up
        lk = client(NS, KubeConfig.from_dict(fake.kubeconfig(NS)))
        target = KubernetesTarget(settings(), lk, poll_seconds=0.001, clock=clock)
        with pytest.raises(KubeError) as caught:
            target.roll_out(V1, EXAMPLE)
        assert str(caught.value) == (
            f"{failed(V1)}rollout of models:/digits/1 did not finish in time (waiting for the deployment spec update "
            "to be observed); nothing was live before, so the deployment was deleted")
        assert fake.get("deployments", NS, NAME) is None
    # The guard is the progress deadline per replica and two more, plus a minute: 1 s x (2 + 2) + 60 s = 64 s
    # after the start, so the first look past it (65 s) gives up.
    assert looks[-1] == 65.0


LONG = "trace " * 100  # an answer longer than what a message quotes (300 characters)


@pytest.mark.parametrize("answer, says", [
    ((200, {"predictions": ["v2"]}), 'expected 2 predictions, got: {"predictions": ["v2"]}'),
    ((200, {"predictions": "v2 v2"}), 'expected 2 predictions, got: {"predictions": "v2 v2"}'),
    ((200, {"predictions": ["v2"], "trace": LONG}),
     "expected 2 predictions, got: " + json.dumps({"predictions": ["v2"], "trace": LONG})[:300] + ";"),
    ((500, {"message": LONG}), "got HTTP 500: " + json.dumps({"message": LONG})[:300] + ";"),
], ids=["one-row-short", "not-a-list", "long-answer", "long-error"])
def test_a_smoke_test_answer_other_than_one_prediction_per_row_rolls_back_quoting_it(
        cluster: Cluster, answer: tuple[int, dict[str, Any]], says: str) -> None:
    cluster.fake.backend = version_answers({"2": answer})
    message = cluster.failed_rollout()
    assert message.startswith(f"{failed(V2)}smoke test through service {WHERE} ")
    assert says in message and message.endswith("; rolled back to models:/digits/1")
    assert cluster.pinned() == "1"


def test_a_smoke_test_whose_connection_drops_rolls_back(cluster: Cluster) -> None:
    answers = version_answers()

    def drops_version_2(pod: dict[str, Any], method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if pod["metadata"]["annotations"]["shipyard.dev/model-version"] == "2":
            raise ConnectionResetError("the pod went away")  # the fake API server closes without an answer
        return answers(pod, method, path, body)

    cluster.fake.backend = drops_version_2
    message = cluster.failed_rollout()
    assert message.startswith(f"{failed(V2)}smoke test through service {WHERE} failed: ")
    assert message.endswith("; rolled back to models:/digits/1") and cluster.pinned() == "1"


def test_an_example_the_smoke_test_cannot_send_rolls_back_naming_the_error(cluster: Cluster) -> None:
    target = cluster.target()
    target.roll_out(V1, EXAMPLE)
    with pytest.raises(KubeError) as caught:
        target.roll_out(V2, [[math.nan] * 4])  # not JSON: not a KubeError, rolled back all the same
    message = str(caught.value)
    assert message.startswith(f"{failed(V2)}ValueError: Out of range float values are not JSON compliant")
    assert message.endswith("; rolled back to models:/digits/1") and cluster.pinned() == "1"


def test_the_last_good_spec_comes_back_with_its_labels_and_annotations_but_not_the_controllers(
        cluster: Cluster) -> None:
    target = cluster.target()
    target.roll_out(V1, EXAMPLE)
    live = cluster.deployment()
    assert live is not None
    labels = dict(live["metadata"]["labels"])
    # As on a cluster: the Deployment controller and kubectl keep annotations of their own beside a team's.
    live["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1",
                                       "kubectl.kubernetes.io/last-applied-configuration": "{}",
                                       "example.com/owner": "ml-platform"}
    cluster.fake.put("deployments", live)
    cluster.fake.backend = version_answers({"2": (503, {"message": "warming up"})})
    with pytest.raises(KubeError, match="rolled back to models:/digits/1"):
        target.roll_out(V2, EXAMPLE)
    restored = cluster.deployment()
    assert restored is not None and cluster.pinned() == "1"
    assert restored["metadata"]["labels"] == labels
    assert restored["metadata"]["annotations"] == {"example.com/owner": "ml-platform"}


def _available(cluster: Cluster) -> None:
    """Wait until the controller reports every replica of the current Deployment available."""
    for _ in range(500):
        deployment = cluster.deployment() or {}
        status = deployment.get("status", {})
        if status.get("observedGeneration") == deployment["metadata"].get("generation") and \
                status.get("availableReplicas") == deployment["spec"]["replicas"] == status.get("updatedReplicas"):
            return
        time.sleep(0.02)
    raise AssertionError(f"deployment never became available: {cluster.deployment()}")


def test_a_deployment_not_pinned_to_a_version_is_replaced_and_restored_as_the_previous_spec(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    hand_made = manifests.deployment(settings(image="registry.example/hand-made:1"), "digits", "0")
    template = hand_made["spec"]["template"]["metadata"]
    del template["annotations"]["shipyard.dev/model-version"], template["labels"]["shipyard.dev/model-version"]
    cluster.fake.apply("deployments", NS, NAME, hand_made)  # a model name, no version: not one Shipyard rolled
    _available(cluster)
    target = cluster.target()
    assert target.live() is None
    cluster.outcomes["1"] = "crash"
    with pytest.raises(KubeError) as caught:
        target.roll_out(V1, EXAMPLE)
    assert str(caught.value).endswith("; rolled back to the previous spec")
    assert (logging.WARNING, f"rolling deployment {WHERE} back to the previous spec") in logged(caplog)
    restored = cluster.deployment()
    assert restored is not None and restored["spec"] == json.loads(json.dumps(hand_made["spec"]))


def test_a_rollout_over_one_still_in_progress_says_so_and_starts_from_its_spec(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    cluster.target().roll_out(V1, EXAMPLE)
    cluster.outcomes["2"] = "unready"
    # Another pipeline applied version 2 and has not seen it finish (it never will).
    cluster.fake.apply("deployments", NS, NAME, manifests.deployment(settings(), "digits", "2"))
    caplog.set_level(logging.INFO, logger=LOGGER)
    v3 = ModelRef(model_name="digits", version="3")
    result = cluster.target().roll_out(v3, EXAMPLE)
    assert result.previous == V2 and result.predictions == ["v3", "v3"] and cluster.pinned() == "3"
    warnings = [m for level, m in logged(caplog) if level == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"deployment {WHERE} was not fully rolled out before this rollout (")
    assert warnings[0].endswith("); a failure restores that spec")
    state = warnings[0].split(" (", 1)[1].rsplit(")", 1)[0]
    assert state in ("waiting for the deployment spec update to be observed", "1 out of 2 new replicas have been "
                     "updated", f"deployment {NAME} exceeded its progress deadline"), state


def test_an_unreachable_api_server_is_one_line_and_nothing_is_applied() -> None:
    nowhere = fakekube.FakeKube()
    nowhere.url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    target = KubernetesTarget(settings(), client(NS, KubeConfig.from_dict(nowhere.kubeconfig(NS))))
    with pytest.raises(KubeError) as caught:
        target.roll_out(V1, EXAMPLE)
    message = str(caught.value)
    assert message.startswith(f"Kubernetes API unreachable while trying to read deployment {WHERE}: ")
    assert "\n" not in message


def test_every_distinct_pod_problem_is_named(cluster: Cluster) -> None:
    target = cluster.target()
    target.roll_out(V1, EXAMPLE)
    # A pod of the live version was evicted and cannot be scheduled again (its node lost its GPU).
    unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": fakedeploy.UNSCHEDULABLE}
    cluster.fake.put("pods", {"metadata": {"name": f"{NAME}-evicted", "namespace": NS,
                                           "labels": dict(manifests.SELECTOR)},
                              "status": {"phase": "Pending", "conditions": [unscheduled]}})
    cluster.outcomes["2"] = "crash"
    with pytest.raises(KubeError) as caught:
        target.roll_out(V2, EXAMPLE)
    problems = str(caught.value).split("(1s without progress): ", 1)[1].rsplit("; rolled back to", 1)[0].split("; ")
    assert len(problems) == 2, problems
    assert f"pod {NAME}-evicted cannot be scheduled: {fakedeploy.UNSCHEDULABLE}" in problems
    assert any(p.startswith(f"pod {NAME}-") and "CrashLoopBackOff" in p for p in problems), problems


def test_a_deployment_deleted_by_hand_during_a_first_rollout_is_reported_with_both_failures() -> None:
    looks = itertools.count()
    with fakekube.serve() as fake:  # no controller: the rollout waits, and meanwhile someone deletes it
        def clock() -> float:
            if next(looks) == 3:
                fake.remove("deployments", NS, NAME)  # kubectl delete deployment shipyard-inference
            return 0.0

        lk = client(NS, KubeConfig.from_dict(fake.kubeconfig(NS)))
        target = KubernetesTarget(settings(), lk, poll_seconds=0.001, clock=clock)
        with pytest.raises(KubeError) as caught:
            target.roll_out(V1, EXAMPLE)
    gone = f'404 deployments "{NAME}" not found'
    assert str(caught.value) == (
        f"{failed(V1)}Kubernetes API refused to read deployment {WHERE}: {gone}; nothing was live before, and "
        f"deleting the deployment failed too: Kubernetes API refused to delete deployment {WHERE}: {gone}")


def test_a_rollback_the_api_server_drops_says_what_serves(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = version_answers()

    def fails_then_the_api_server_goes_away(pod: dict[str, Any], method: str, path: str,
                                            body: bytes) -> tuple[int, dict[str, Any]]:
        if pod["metadata"]["annotations"]["shipyard.dev/model-version"] != "2":
            return answers(pod, method, path, body)

        def drop(*args: Any) -> dict[str, Any]:
            raise ConnectionResetError("the API server went away")  # closes without an answer
        monkeypatch.setattr(cluster.fake, "apply", drop)
        return 500, {"message": "version 2 is broken"}

    cluster.fake.backend = fails_then_the_api_server_goes_away
    message = cluster.failed_rollout()
    assert message.startswith(f"{failed(V2)}smoke test through service {WHERE} got HTTP 500: ")
    assert (f"; rolling back to models:/digits/1 failed too: Kubernetes API unreachable while trying to apply the "
            f"last good spec of deployment {WHERE}: ") in message
    assert cluster.pinned() == "2"  # as the message says: the rollback never reached the cluster


def test_a_rollback_no_controller_finishes_fails_after_the_guard_and_says_so() -> None:
    outcomes: dict[str, str] = {}
    ticks = itertools.count(0, 100)
    with fakekube.serve() as fake, fakedeploy.controller(fake, fakedeploy.by_version(outcomes)) as controller:
        answers = version_answers()

        def fails_and_the_controller_stops(pod: dict[str, Any], method: str, path: str,
                                           body: bytes) -> tuple[int, dict[str, Any]]:
            if pod["metadata"]["annotations"]["shipyard.dev/model-version"] != "2":
                return answers(pod, method, path, body)
            controller._stop.set()  # the controller manager goes down: nothing observes the rollback
            return 500, {"message": "version 2 is broken"}

        def clock() -> float:  # real time until the controller stops, then 100 s a look: the guard, not a wait
            return float(next(ticks)) if controller._stop.is_set() else 0.0

        fake.backend = fails_and_the_controller_stops
        lk = client(NS, KubeConfig.from_dict(fake.kubeconfig(NS)))
        target = KubernetesTarget(settings(), lk, poll_seconds=0.01, clock=clock)
        target.roll_out(V1, EXAMPLE)
        with pytest.raises(KubeError) as caught:
            target.roll_out(V2, EXAMPLE)
    assert str(caught.value).endswith(
        "; rolling back to models:/digits/1 failed too: rollback to models:/digits/1 did not finish in time (waiting "
        "for the deployment spec update to be observed)")
