"""The twin's controllers behave as a real cluster's: what a user of Jobs, Deployments and Services would see.

Pods do not run here: a test-only kubelet (below) starts bound pods (Running, a pod IP, Ready unless the image
says ``:broken``) and ends them only when a test says how (``finish``). Deadlines move with an injected clock.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.twin.controlkit import ManualClock, has_true, stamp
from tests.twin.controllers import ControllerManager
from tests.twin.store import Store

NS = "ml"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
SAFE = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"}}
Obj = dict[str, Any]


def node(name: str, cpu: str = "8") -> Obj:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": "32Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def template(labels: dict[str, str], image: str = "shipyard:1", cpu: str = "1", safe: bool = True,
             restart: str = "Always") -> Obj:
    container = {"name": "main", "image": image, "ports": [{"name": "http", "containerPort": 8080}],
                 "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}
    if safe:
        container["securityContext"] = SAFE
    return {"metadata": {"labels": labels}, "spec": {"restartPolicy": restart, "containers": [container]}}


class FakeKubelet:
    """Test-only kubelet: starts bound pods and ends them as the test says; removes pods being deleted."""

    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.store, self.clock = store, clock
        self.ips = 1

    def step(self) -> None:
        with self.store.lock:
            for (plural, _, _), pod in sorted(self.store.objects.items()):
                if plural != "pods" or not pod["spec"].get("nodeName"):
                    continue
                if pod["metadata"].get("deletionTimestamp"):
                    self._stop(pod)
                elif (pod.get("status") or {}).get("phase", "Pending") == "Pending":
                    self._start(pod)

    def _start(self, pod: Obj) -> None:
        self.ips += 1
        now = stamp(self.clock())
        up = not pod["spec"]["containers"][0]["image"].endswith(":broken")
        status = copy.deepcopy(pod.get("status") or {})
        status.update(phase="Running", podIP=f"127.42.200.{self.ips}", startTime=now, containerStatuses=[
            {"name": "main", "ready": up, "restartCount": 0, "state": {"running": {"startedAt": now}}}])
        status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Ready"] + [
            {"type": "Ready", "status": "True" if up else "False", "lastTransitionTime": now}]
        self.store.set_status("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], status)

    def _stop(self, pod: Obj) -> None:
        if pod["metadata"].get("finalizers"):
            if pod["status"].get("phase") not in ("Succeeded", "Failed"):
                finish(self.store, self.clock, pod["metadata"]["name"], 143)
            return
        self.store.remove("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])


def finish(store: Store, clock: ManualClock, name: str, code: int, conditions: list[Obj] | None = None) -> None:
    """End a pod's container with ``code`` as the kubelet reports it (Succeeded for 0, else Failed)."""
    now = stamp(clock())
    pod = store.get("pods", NS, name)
    assert pod is not None, name
    status = copy.deepcopy(pod.get("status") or {})
    status.update(phase="Succeeded" if code == 0 else "Failed", containerStatuses=[
        {"name": "main", "ready": False, "restartCount": 0,
         "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                  "finishedAt": now}}}])
    status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Ready"] + [
        {"type": "Ready", "status": "False", "lastTransitionTime": now}, *(conditions or [])]
    store.set_status("pods", NS, name, status)


@dataclass
class Twin:
    store: Store
    clock: ManualClock
    manager: ControllerManager
    kubelet: FakeKubelet

    def settle(self, check: Callable[[], None] | None = None) -> None:
        """Run the controllers and the kubelet until neither changes anything; ``check`` after every step."""
        for _ in range(200):
            before = self.store.version
            self.manager.sync()
            if check:
                check()
            self.kubelet.step()
            if check:
                check()
            if self.store.version == before:
                return
        raise AssertionError("the twin never settled")

    def pods(self, **labels: str) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return list(self.store.listing("pods", NS, selector)["items"])

    def events(self, name: str, reason: str) -> list[Obj]:
        return [e for e in self.store.listing("events", NS)["items"]
                if e["involvedObject"]["name"] == name and e["reason"] == reason]

    def get(self, plural: str, name: str) -> Obj:
        obj = self.store.get(plural, NS, name)
        assert obj is not None, f"{plural}/{name} is gone"
        return obj


@pytest.fixture
def twin() -> Iterator[Twin]:
    store = Store()
    store.put("namespaces", {"metadata": {"name": NS, "labels": RESTRICTED}})
    store.put("nodes", node("node-a"))
    clock = ManualClock()
    yield Twin(store, clock, ControllerManager(store, clock), FakeKubelet(store, clock))


def job(name: str, **spec: Any) -> Obj:
    body = {"template": template({"app": name}, restart="Never"), **spec}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS}, "spec": body}


def condition(obj: Obj, kind: str) -> Obj:
    found = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)
    assert found is not None, f"no {kind} condition in {obj.get('status')}"
    return found


# -- Jobs ---------------------------------------------------------------------------------------------------

def test_an_indexed_job_completes_when_every_index_succeeds(twin: Twin) -> None:
    twin.store.create("jobs", job("train", completionMode="Indexed", completions=2, parallelism=2))
    twin.settle()
    pods = sorted(twin.pods(**{"job-name": "train"}), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods] == ["0", "1"]
    assert [p["metadata"]["name"].rsplit("-", 1)[0] for p in pods] == ["train-0", "train-1"]
    assert [p["spec"]["hostname"] for p in pods] == ["train-0", "train-1"]
    env = pods[1]["spec"]["containers"][0]["env"]
    assert {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}} in env
    assert pods[0]["metadata"]["ownerReferences"][0]["uid"] == twin.get("jobs", "train")["metadata"]["uid"]
    assert twin.get("jobs", "train")["status"]["active"] == 2

    finish(twin.store, twin.clock, pods[0]["metadata"]["name"], 0)
    twin.settle()
    half = twin.get("jobs", "train")
    assert half["status"]["completedIndexes"] == "0" and not has_true(half, "Complete")

    finish(twin.store, twin.clock, pods[1]["metadata"]["name"], 0)
    twin.settle()
    done = twin.get("jobs", "train")
    assert condition(done, "Complete")["status"] == "True"
    assert condition(done, "SuccessCriteriaMet")["reason"] == "CompletionsReached"
    assert (done["status"]["succeeded"], done["status"]["completedIndexes"]) == (2, "0,1")
    assert "active" not in done["status"] and done["status"]["completionTime"]
    assert twin.events("train", "Completed")


def test_a_failed_index_fails_the_job_when_no_failed_index_is_allowed(twin: Twin) -> None:
    twin.store.create("jobs", job("train", completionMode="Indexed", completions=2, parallelism=2,
                                  backoffLimitPerIndex=0, maxFailedIndexes=0))
    twin.settle()
    first = next(p for p in twin.pods(**{"job-name": "train"}) if p["spec"]["hostname"] == "train-0")
    finish(twin.store, twin.clock, first["metadata"]["name"], 1)
    twin.settle()
    failed = twin.get("jobs", "train")
    assert condition(failed, "Failed")["reason"] == "MaxFailedIndexesExceeded"  # 1.35's reason for this limit
    assert condition(failed, "FailureTarget")["reason"] == "MaxFailedIndexesExceeded"
    assert failed["status"]["failedIndexes"] == "0"
    assert [p["metadata"]["name"] for p in twin.pods(**{"job-name": "train"})] == [first["metadata"]["name"]]
    assert twin.events("train", "MaxFailedIndexesExceeded")[0]["type"] == "Warning"


def test_failed_indexes_within_the_limit_fail_the_job_once_every_index_is_done(twin: Twin) -> None:
    twin.store.create("jobs", job("train", completionMode="Indexed", completions=2, parallelism=2,
                                  backoffLimitPerIndex=0, maxFailedIndexes=1))
    twin.settle()
    pods = {p["spec"]["hostname"]: p["metadata"]["name"] for p in twin.pods(**{"job-name": "train"})}
    finish(twin.store, twin.clock, pods["train-0"], 1)
    twin.clock.advance(3600)
    twin.settle()
    assert len(twin.pods(**{"job-name": "train"})) == 2, "a failed index must not be retried past its limit"
    assert not has_true(twin.get("jobs", "train"), "Failed")
    finish(twin.store, twin.clock, pods["train-1"], 0)
    twin.settle()
    failed = twin.get("jobs", "train")
    assert condition(failed, "Failed")["reason"] == "FailedIndexes"
    assert (failed["status"]["failedIndexes"], failed["status"]["completedIndexes"]) == ("0", "1")


def test_a_disrupted_pod_is_ignored_and_replaced_and_a_failjob_exit_code_fails_the_job(twin: Twin) -> None:
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In",
                                                              "values": [42]}}]}
    twin.store.create("jobs", job("train", backoffLimit=0, podFailurePolicy=policy))
    twin.settle()
    [first] = twin.pods(**{"job-name": "train"})
    finish(twin.store, twin.clock, first["metadata"]["name"], 137, [
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}])
    twin.clock.advance(10)  # the pod-failure backoff before a replacement
    twin.settle()
    status = twin.get("jobs", "train")["status"]
    assert not has_true(twin.get("jobs", "train"), "Failed") and "failed" not in status
    replacement = [p for p in twin.pods(**{"job-name": "train"}) if p["status"]["phase"] == "Running"]
    assert len(replacement) == 1 and status["active"] == 1

    finish(twin.store, twin.clock, replacement[0]["metadata"]["name"], 42)
    twin.settle()
    failed = condition(twin.get("jobs", "train"), "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert failed["message"] == (f"Container main for pod {NS}/{replacement[0]['metadata']['name']} failed with "
                                 "exit code 42 matching FailJob rule at index 1")


def test_active_deadline_fails_the_job_and_deletes_its_pods(twin: Twin) -> None:
    twin.store.create("jobs", job("train", activeDeadlineSeconds=60, parallelism=2, completions=2))
    twin.settle()
    assert len(twin.pods(**{"job-name": "train"})) == 2
    twin.clock.advance(59)
    twin.settle()
    assert not has_true(twin.get("jobs", "train"), "Failed")
    twin.clock.advance(1)
    twin.settle()
    failed = twin.get("jobs", "train")
    assert (condition(failed, "Failed")["reason"], condition(failed, "Failed")["message"]) == (
        "DeadlineExceeded", "Job was active longer than specified deadline")
    assert twin.pods(**{"job-name": "train"}) == []
    assert failed["status"].get("active", 0) == 0 and failed["status"]["failed"] == 2


def test_a_pod_admission_refuses_is_a_failed_create_event_and_no_pod(twin: Twin) -> None:
    body = job("train")
    body["spec"]["template"] = template({"app": "train"}, safe=False, restart="Never")
    twin.store.create("jobs", body)
    twin.settle()
    assert twin.pods(**{"job-name": "train"}) == []
    [event] = twin.events("train", "FailedCreate")
    assert event["type"] == "Warning" and event["source"]["component"] == "job-controller"
    assert event["message"].startswith('Error creating: pods "train-')
    assert ' is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false' in (
        event["message"])
    stuck = twin.get("jobs", "train")
    assert not has_true(stuck, "Failed") and "active" not in stuck["status"]
    twin.clock.advance(1)  # the controller retries after its backoff, as the real one does
    twin.settle()
    again = twin.events("train", "FailedCreate")  # each try names a new pod, so each is its own event
    assert len(again) == 2 and all("violates PodSecurity" in e["message"] for e in again)
    assert twin.pods(**{"job-name": "train"}) == []


def test_deleting_a_finished_job_takes_its_pods_and_its_headless_service(twin: Twin) -> None:
    created = twin.store.create("jobs", job("train", ttlSecondsAfterFinished=30))
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": created["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}
    twin.store.create("services", {"metadata": {"name": "train", "namespace": NS, "ownerReferences": [ref]},
                                   "spec": {"clusterIP": "None", "selector": {"job-name": "train"}}})
    twin.settle()
    [pod] = twin.pods(**{"job-name": "train"})
    assert twin.get("endpoints", "train")["subsets"][0]["addresses"][0]["targetRef"]["name"] == pod["metadata"][
        "name"]
    finish(twin.store, twin.clock, pod["metadata"]["name"], 0)
    twin.settle()
    assert has_true(twin.get("jobs", "train"), "Complete")
    twin.clock.advance(30)  # ttlSecondsAfterFinished: the TTL controller deletes the Job (foreground)
    twin.settle()
    for plural in ("jobs", "pods", "services", "endpoints"):
        assert twin.store.listing(plural, NS)["items"] == [], plural


def test_an_orphaning_delete_keeps_the_pods(twin: Twin) -> None:
    twin.store.create("jobs", job("train"))
    twin.settle()
    twin.store.delete("jobs", NS, "train", propagation="Orphan")
    twin.settle()
    [pod] = twin.pods(**{"job-name": "train"})
    assert pod["status"]["phase"] == "Running" and "ownerReferences" not in pod["metadata"]


def test_a_suspended_job_runs_no_pods_until_resumed(twin: Twin) -> None:
    twin.store.create("jobs", job("train", suspend=True, activeDeadlineSeconds=60))
    twin.settle()
    assert twin.pods(**{"job-name": "train"}) == []
    assert condition(twin.get("jobs", "train"), "Suspended")["status"] == "True"
    twin.clock.advance(600)  # a suspended Job's deadline does not run
    twin.settle()
    resumed = copy.deepcopy(twin.get("jobs", "train"))
    resumed["spec"]["suspend"] = False
    twin.store.update("jobs", resumed)
    twin.settle()
    assert len(twin.pods(**{"job-name": "train"})) == 1
    assert condition(twin.get("jobs", "train"), "Suspended")["reason"] == "JobResumed"
    assert not has_true(twin.get("jobs", "train"), "Failed")


# -- Deployments ----------------------------------------------------------------------------------------------

def deployment(name: str, replicas: int = 2, image: str = "shipyard:1", cpu: str = "1", **spec: Any) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": template({"app": name}, image=image, cpu=cpu), **spec}}


def roll_to(twin: Twin, name: str, image: str) -> None:
    current = copy.deepcopy(twin.get("deployments", name))
    current["spec"]["template"]["spec"]["containers"][0]["image"] = image
    twin.store.update("deployments", current)


def ready_pods(twin: Twin, name: str) -> list[Obj]:
    return [p for p in twin.pods(app=name) if has_true(p, "Ready") and not p["metadata"].get("deletionTimestamp")]


def never_below(twin: Twin, name: str, floor: int) -> Callable[[], None]:
    def check() -> None:
        assert len(ready_pods(twin, name)) >= floor, "ready replicas dropped below the desired count"
    return check


def test_a_rolling_update_keeps_every_replica_ready_and_completes(twin: Twin) -> None:
    twin.store.create("deployments", deployment("web"))
    twin.settle()
    assert twin.get("deployments", "web")["status"]["availableReplicas"] == 2
    roll_to(twin, "web", "shipyard:2")
    twin.settle(check=never_below(twin, "web", 2))
    done = twin.get("deployments", "web")
    status = done["status"]
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"], status["availableReplicas"]) == (
        2, 2, 2, 2)
    assert status["observedGeneration"] == done["metadata"]["generation"] == 2
    assert condition(done, "Progressing")["reason"] == "NewReplicaSetAvailable"
    assert condition(done, "Available")["status"] == "True"
    assert done["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert {p["spec"]["containers"][0]["image"] for p in twin.pods(app="web")} == {"shipyard:2"}
    sets = twin.store.listing("replicasets", NS)["items"]
    assert sorted(r["spec"]["replicas"] for r in sets) == [0, 2]
    hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in twin.pods(app="web")}
    assert [r["metadata"]["name"] for r in sets if r["spec"]["replicas"]] == [f"web-{hashes.pop()}"]


def test_a_rolling_update_with_no_room_for_its_surge_pod_stalls(twin: Twin) -> None:
    twin.store.remove("nodes", "", "node-a")
    twin.store.put("nodes", node("node-a", cpu="2"))  # room for exactly the two replicas
    twin.store.create("deployments", deployment("web"))
    twin.settle()
    roll_to(twin, "web", "shipyard:2")
    twin.settle(check=never_below(twin, "web", 2))
    [surge] = [p for p in twin.pods(app="web") if p["spec"]["containers"][0]["image"] == "shipyard:2"]
    assert surge["status"]["phase"] == "Pending" and "nodeName" not in surge["spec"]
    scheduled = condition(surge, "PodScheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    [event] = twin.events(surge["metadata"]["name"], "FailedScheduling")
    assert event["message"].startswith("0/1 nodes are available: 1 Insufficient cpu.")
    assert event["source"]["component"] == "default-scheduler" and event["type"] == "Warning"
    stalled = twin.get("deployments", "web")
    assert (stalled["status"]["updatedReplicas"], stalled["status"]["availableReplicas"]) == (1, 2)
    twin.clock.advance(601)  # progressDeadlineSeconds defaults to 600
    twin.settle(check=never_below(twin, "web", 2))
    progressing = condition(twin.get("deployments", "web"), "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")


def test_a_broken_template_exceeds_the_progress_deadline_while_the_old_pods_serve(twin: Twin) -> None:
    twin.store.create("deployments", deployment("web", progressDeadlineSeconds=120))
    twin.store.create("services", {"metadata": {"name": "web", "namespace": NS}, "spec": {
        "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    twin.settle()
    serving = {p["status"]["podIP"] for p in ready_pods(twin, "web")}
    roll_to(twin, "web", "shipyard:broken")
    twin.settle(check=never_below(twin, "web", 2))
    twin.clock.advance(60)
    twin.settle()
    assert condition(twin.get("deployments", "web"), "Progressing")["reason"] == "ReplicaSetUpdated"
    twin.clock.advance(61)
    twin.settle(check=never_below(twin, "web", 2))
    stuck = twin.get("deployments", "web")
    progressing = condition(stuck, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert progressing["message"].endswith("has timed out progressing.")
    assert stuck["status"]["availableReplicas"] == 2 and stuck["status"]["updatedReplicas"] == 1
    [subset] = twin.get("endpoints", "web")["subsets"]
    assert {a["ip"] for a in subset["addresses"]} == serving
    assert [a["targetRef"]["name"] for a in subset["notReadyAddresses"]] == [
        p["metadata"]["name"] for p in twin.pods(app="web") if p["spec"]["containers"][0]["image"].endswith("broken")]


def test_a_replicaset_whose_pods_admission_refuses_reports_failed_create(twin: Twin) -> None:
    body = deployment("web")
    body["spec"]["template"] = template({"app": "web"}, safe=False)
    twin.store.create("deployments", body)
    twin.settle()
    assert twin.pods(app="web") == []
    [rs] = twin.store.listing("replicasets", NS)["items"]
    [event] = twin.events(rs["metadata"]["name"], "FailedCreate")
    assert event["source"]["component"] == "replicaset-controller"
    assert 'is forbidden: violates PodSecurity "restricted:latest"' in event["message"]
    failure = condition(twin.get("deployments", "web"), "ReplicaFailure")
    assert (failure["status"], failure["reason"]) == ("True", "FailedCreate")
    assert condition(twin.get("deployments", "web"), "Available")["status"] == "False"


def test_a_settled_cluster_stays_still_as_time_passes_and_reports_its_budget(twin: Twin) -> None:
    twin.store.create("deployments", deployment("web"))
    twin.store.create("poddisruptionbudgets", {"metadata": {"name": "web", "namespace": NS}, "spec": {
        "minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}})
    twin.store.create("jobs", job("idle", suspend=True))
    twin.settle()
    budget = twin.get("poddisruptionbudgets", "web")["status"]
    assert {k: budget[k] for k in ("currentHealthy", "desiredHealthy", "disruptionsAllowed", "expectedPods")} == {
        "currentHealthy": 2, "desiredHealthy": 1, "disruptionsAllowed": 1, "expectedPods": 2}
    twin.clock.advance(3600)
    assert not twin.manager.sync(), "a controller rewrote an object that had nothing new to say"


# -- Endpoints ------------------------------------------------------------------------------------------------

def test_endpoints_list_only_ready_pods_and_follow_readiness(twin: Twin) -> None:
    """The manager's own thread keeps Endpoints current as pods change, as kube-controller-manager does."""
    twin.store.create("services", {"metadata": {"name": "web", "namespace": NS}, "spec": {
        "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    for name, ready in (("web-a", "True"), ("web-b", "False")):
        pod = {"metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
               "spec": {"nodeName": "node-a", **template({"app": "web"})["spec"]},
               "status": {"phase": "Running", "podIP": f"127.42.201.{len(name) + ord(name[-1])}",
                          "conditions": [{"type": "Ready", "status": ready}]}}
        twin.store.put("pods", pod)
    with twin.manager:
        subsets = wait_for(twin.store, lambda: (twin.store.get("endpoints", NS, "web") or {}).get("subsets"))
        [subset] = subsets
        assert [a["targetRef"]["name"] for a in subset["addresses"]] == ["web-a"]
        assert [a["targetRef"]["name"] for a in subset["notReadyAddresses"]] == ["web-b"]
        assert subset["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
        status = copy.deepcopy(twin.get("pods", "web-a")["status"])
        status["conditions"] = [{"type": "Ready", "status": "False"}]
        twin.store.set_status("pods", NS, "web-a", status)
        wait_for(twin.store, lambda: "addresses" not in twin.get("endpoints", "web")["subsets"][0])


def wait_for(store: Store, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Wait on the store's change condition until ``probe`` answers truthy (the deadline is only a guard)."""
    deadline = time.monotonic() + timeout
    with store.lock:
        while not (found := probe()):
            assert time.monotonic() < deadline, "the controllers never got there"
            store.lock.wait(0.5)
    return found
