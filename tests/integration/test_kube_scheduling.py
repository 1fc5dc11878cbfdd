"""A training Job whose pod cannot be scheduled fails with the scheduler's reason (fake API server over HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import KubeConfig
from lightkube.resources.core_v1 import Pod

from shipyard.errors import KubeError
from shipyard.kube import SchedulingWatch, client
from tests import fakekube

NS = "shipyard"
REASON = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


class Clock:
    """A clock the test moves: the watch's deadline is about elapsed time, not about waiting in a test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kube() -> Iterator[fakekube.FakeKube]:
    with fakekube.serve() as fake:
        yield fake


def _job(fake: fakekube.FakeKube, flow_run_id: str, timeout: str | None = "60s") -> None:
    annotations = {"shipyard.dev/unschedulable-timeout": timeout} if timeout else {}
    fake.put("jobs", {"metadata": {"name": "calm-otter-abc12", "namespace": NS, "annotations": annotations,
                                   "labels": {"prefect.io/flow-run-id": flow_run_id}},
                      "spec": {"template": {"spec": {"containers": [{"name": "prefect-job", "image": "x"}]}}}})


def _pod(fake: fakekube.FakeKube, scheduled: bool, message: str = REASON) -> None:
    condition: dict[str, Any] = {"type": "PodScheduled", "status": "True"} if scheduled else {
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    fake.put("pods", {"metadata": {"name": "calm-otter-abc12-x7k2p", "namespace": NS,
                                   "labels": {"job-name": "calm-otter-abc12"}},
                      "spec": {"containers": [{"name": "prefect-job", "image": "x"}]},
                      "status": {"phase": "Pending", "conditions": [condition]}})


def _watch(fake: fakekube.FakeKube, clock: Clock) -> SchedulingWatch:
    return SchedulingWatch(client(NS, KubeConfig.from_dict(fake.kubeconfig(NS))), NS, "run-1", clock=clock)


def _event(fake: fakekube.FakeKube, name: str, reason: str, message: str, at: str,
           pod: str = "calm-otter-abc12-x7k2p") -> None:
    fake.put("events", {"metadata": {"name": name, "namespace": NS}, "reason": reason,
                        "involvedObject": {"kind": "Pod", "name": pod}, "message": message, "lastTimestamp": at})


def test_unschedulable_pod_past_the_timeout_fails_with_the_schedulers_reason_and_deletes_the_job(
        kube: fakekube.FakeKube) -> None:
    clock, watch = Clock(), None
    _job(kube, "run-1", timeout="60s")
    # The pod condition keeps an older verdict (two nodes); the newest FailedScheduling event of this pod says
    # what blocks it now (three nodes, none with a free GPU). The message must be that event's.
    _pod(kube, scheduled=False, message="0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    _event(kube, "ev0", "FailedScheduling", "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
           "2026-01-01T00:00:00Z")
    _event(kube, "ev1", "FailedScheduling", REASON, "2026-01-01T00:05:00Z")
    _event(kube, "ev2", "NotTriggerScaleUp", "pod didn't trigger scale-up: max node group size reached",
           "2026-01-01T00:06:00Z")
    _event(kube, "ev3", "FailedScheduling", "0/3 nodes are available: another pod's reason",
           "2026-01-01T00:07:00Z", pod="someone-else-x1")
    watch = _watch(kube, clock)
    watch.check()  # first sight: the clock starts
    clock.now += 59
    watch.check()
    assert kube.get("jobs", NS, "calm-otter-abc12") is not None
    clock.now += 2
    with pytest.raises(KubeError) as caught:
        watch.check()
    message = str(caught.value)
    assert "shipyard/calm-otter-abc12" in message and "61s" in message
    assert message.endswith(f"the scheduler said: {REASON}")  # the newest event of this pod, not the condition
    assert "\n" not in message
    assert kube.get("jobs", NS, "calm-otter-abc12") is None
    assert kube.get("pods", NS, "calm-otter-abc12-x7k2p") is None  # deleted with the job (background cascade)


def test_a_job_whose_pods_admission_refuses_fails_at_once_with_the_controllers_message_and_is_deleted(
        kube: fakekube.FakeKube) -> None:
    refused = ('Error creating: pods "calm-otter-abc12-x7k2p" is forbidden: violates PodSecurity '
               '"restricted:v1.35": allowPrivilegeEscalation != false (container "prefect-job" must set '
               'securityContext.allowPrivilegeEscalation=false)')
    _job(kube, "run-1")
    watch = _watch(kube, Clock())
    watch.check()  # no pod yet and no refusal: the controller has not tried
    _event(kube, "other", "FailedCreate", "about another job", "2026-01-01T00:00:00Z", pod="someone-else")
    watch.check()  # another object's refusal is not this Job's
    kube.put("events", {"metadata": {"name": "fc1", "namespace": NS}, "reason": "FailedCreate", "type": "Warning",
                        "involvedObject": {"kind": "Job", "name": "calm-otter-abc12"}, "message": refused,
                        "lastTimestamp": "2026-01-01T00:00:01Z"})
    with pytest.raises(KubeError) as caught:
        watch.check()
    assert str(caught.value) == f"training job {NS}/calm-otter-abc12 cannot create pods and was deleted: {refused}"
    assert kube.get("jobs", NS, "calm-otter-abc12") is None


def test_the_watch_finds_a_job_by_the_label_it_is_given(kube: fakekube.FakeKube) -> None:
    kube.put("jobs", {"metadata": {"name": "train-k-1", "namespace": NS,
                                   "annotations": {"shipyard.dev/unschedulable-timeout": "1s"},
                                   "labels": {"shipyard.dev/flow-run-id": "run-1"}},
                      "spec": {"template": {"spec": {"containers": [{"name": "train", "image": "x"}]}}}})
    kube.put("pods", {"metadata": {"name": "train-k-1-0-x", "namespace": NS, "labels": {"job-name": "train-k-1"}},
                      "spec": {"containers": [{"name": "train", "image": "x"}]},
                      "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                                     "reason": "Unschedulable", "message": REASON}]}})
    clock = Clock()
    prefects = _watch(kube, clock)
    ours = SchedulingWatch(client(NS, KubeConfig.from_dict(kube.kubeconfig(NS))),
                           NS, "run-1", clock=clock, label="shipyard.dev/flow-run-id")
    for watch in (prefects, ours):
        watch.check()
    clock.now += 5
    prefects.check()  # Prefect's label names no Job here
    with pytest.raises(KubeError, match="stayed unschedulable"):
        ours.check()


def test_a_pod_that_gets_scheduled_in_time_is_left_alone(kube: fakekube.FakeKube) -> None:
    clock = Clock()
    _job(kube, "run-1", timeout="60s")
    _pod(kube, scheduled=False)
    watch = _watch(kube, clock)
    watch.check()
    clock.now += 30
    _pod(kube, scheduled=True)  # the autoscaler brought up a GPU node
    watch.check()
    clock.now += 600
    watch.check()
    assert kube.get("jobs", NS, "calm-otter-abc12") is not None


def test_the_condition_message_is_used_when_no_event_was_kept_and_the_default_timeout_applies(
        kube: fakekube.FakeKube) -> None:
    clock = Clock()
    _job(kube, "run-1", timeout=None)
    _pod(kube, scheduled=False, message="0/2 nodes are available: 2 node(s) had untolerated taint {nvidia.com/gpu}")
    watch = _watch(kube, clock)
    watch.check()
    clock.now += 899
    watch.check()
    clock.now += 1
    with pytest.raises(KubeError, match="untolerated taint"):
        watch.check()


def test_no_job_yet_and_other_runs_jobs_are_ignored(kube: fakekube.FakeKube) -> None:
    clock = Clock()
    watch = _watch(kube, clock)
    watch.check()
    _job(kube, "another-run", timeout="1s")
    _pod(kube, scheduled=False)
    watch.check()
    clock.now += 10
    watch.check()
    assert kube.get("jobs", NS, "calm-otter-abc12") is not None


def test_a_mistyped_timeout_annotation_is_named(kube: fakekube.FakeKube) -> None:
    _job(kube, "run-1", timeout="ten minutes")
    _pod(kube, scheduled=False)
    with pytest.raises(KubeError, match=r"shipyard\.dev/unschedulable-timeout='ten minutes'"):
        _watch(kube, Clock()).check()


def test_the_fake_api_server_streams_watch_events_to_lightkube(kube: fakekube.FakeKube) -> None:
    lk = client(NS, KubeConfig.from_dict(kube.kubeconfig(NS)))
    _pod(kube, scheduled=False)
    seen = []
    for change, pod in lk.watch(Pod, namespace=NS, labels={"job-name": "calm-otter-abc12"}, server_timeout=1):
        seen.append((change, pod.status.conditions[0].status))
        if len(seen) == 1:
            _pod(kube, scheduled=True)
        if len(seen) == 2:
            break
    assert seen == [("ADDED", "False"), ("MODIFIED", "True")]


def test_no_kubeconfig_is_one_line_naming_the_fix() -> None:
    with pytest.raises(KubeError, match="set KUBECONFIG"):
        client(NS)
