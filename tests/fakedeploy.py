"""A fake Deployment controller for the fake API server: what kube-controller-manager and the kubelet would do.

A thread watches the fake's Deployments. For each new ``metadata.generation`` it observes the spec and rolls
pods the way a RollingUpdate with ``maxSurge: 1, maxUnavailable: 0`` does: one surge pod of the new template,
then, if that template is healthy, all replicas of it and none of the old. An unhealthy template keeps its
one surge pod failing (how it fails is up to the test: image pull, crash loop, never ready, unschedulable)
and the old pods serving, until ``progressDeadlineSeconds`` pass without progress: then the ``Progressing``
condition turns to ``ProgressDeadlineExceeded``. Status goes through the same object store the HTTP API
serves, so clients see generation, observedGeneration, replica counts and conditions as on a cluster.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.fakekube import FakeKube

# How a pod template behaves once scheduled: "ok", "pull", "crash", "unready" or "unschedulable".
Behaviour = Callable[[dict[str, Any]], str]
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


def by_version(outcomes: dict[str, str], label: str = "shipyard.dev/model-version") -> Behaviour:
    """Return a behaviour chosen by the template's model-version label ("ok" when unlisted)."""
    return lambda template: outcomes.get(template["metadata"].get("labels", {}).get(label, ""), "ok")


def _hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _container_status(container: dict[str, Any], behaviour: str, pod: str) -> dict[str, Any]:
    image = container["image"]
    status: dict[str, Any] = {"name": container["name"], "image": image, "imageID": "", "restartCount": 0,
                              "ready": behaviour == "ok", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
    if behaviour == "pull":
        status["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}": '
                                       f'ErrImagePull: {image}: not found'}}
    elif behaviour == "crash":
        status.update(restartCount=3, state={"waiting": {
            "reason": "CrashLoopBackOff",
            "message": f"back-off 40s restarting failed container={container['name']} pod={pod}"}},
            lastState={"terminated": {"exitCode": 1, "reason": "Error", "message": "RegistryError: MLflow is\n"
                                      "unreachable"}})
    return status


class DeploymentController:
    """Drive every Deployment of a FakeKube, one small step per tick."""

    def __init__(self, fake: FakeKube, behaviour: Behaviour, tick: float = 0.02) -> None:
        self.fake, self.behaviour, self.tick = fake, behaviour, tick
        self._seen: dict[tuple[str, str], dict[str, Any]] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.tick):
            with self.fake.lock:
                deployments = [json.loads(json.dumps(o)) for (p, _, _), o in self.fake.objects.items()
                               if p == "deployments"]
            for deployment in deployments:
                self._step(deployment)
            self._collect(deployments)

    def _step(self, deployment: dict[str, Any]) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        key = (meta["namespace"], meta["name"])
        seen = self._seen.setdefault(key, {"generation": 0, "good": None})
        template_hash = _hash(spec["template"])
        if seen["generation"] != meta["generation"]:
            seen.update(generation=meta["generation"], hash=template_hash, started=time.monotonic(), phase=0)
        wanted = spec.get("replicas", 1)
        old = [p for p in self._pods(key) if p["metadata"]["labels"]["pod-template-hash"] != template_hash]
        if template_hash == seen["good"] or (self.behaviour(spec["template"]) == "ok" and seen["phase"] >= 1):
            seen["good"] = template_hash
            for pod in old:
                self.fake.remove("pods", key[0], pod["metadata"]["name"])
            for i in range(wanted):
                self._pod(deployment, template_hash, i, "ok")
            self._status(deployment, wanted, wanted, wanted, progressing=("True", "NewReplicaSetAvailable"))
            return
        behaviour = self.behaviour(spec["template"])
        self._pod(deployment, template_hash, 0, behaviour)  # the one surge pod
        seen["phase"] += 1
        available = sum(1 for p in old if self._ready(p))
        past = time.monotonic() - seen["started"] > spec.get("progressDeadlineSeconds", 600)
        progressing = ("False", "ProgressDeadlineExceeded") if past else ("True", "ReplicaSetUpdated")
        self._status(deployment, len(old) + 1, 1, available + (behaviour == "ok"), progressing=progressing)

    def _pods(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        with self.fake.lock:
            return [o for (p, ns, _), o in self.fake.objects.items()
                    if p == "pods" and ns == key[0] and o["metadata"].get("labels", {}).get("fake/owner") == key[1]]

    @staticmethod
    def _ready(pod: dict[str, Any]) -> bool:
        return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])

    def _pod(self, deployment: dict[str, Any], template_hash: str, index: int, behaviour: str) -> None:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        name = f"{meta['name']}-{template_hash}-{index}"
        if self.fake.get("pods", meta["namespace"], name) is not None:
            return
        labels = {**template["metadata"].get("labels", {}), "pod-template-hash": template_hash,
                  "fake/owner": meta["name"]}
        scheduled = behaviour != "unschedulable"
        conditions = [{"type": "PodScheduled", "status": "True"} if scheduled else {
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE},
            {"type": "Ready", "status": "True" if behaviour == "ok" else "False"}]
        status: dict[str, Any] = {"phase": "Running" if behaviour in ("ok", "unready") else "Pending",
                                  "conditions": conditions}
        if scheduled:
            status["containerStatuses"] = [_container_status(c, behaviour, name)
                                           for c in template["spec"]["containers"]]
        self.fake.put("pods", {"metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                                            "annotations": template["metadata"].get("annotations", {})},
                               "spec": template["spec"], "status": status})
        if behaviour == "unready":
            self._event(meta["namespace"], name, "Unhealthy", "Readiness probe failed: HTTP probe failed with "
                        "statuscode: 503")
        if behaviour == "unschedulable":
            self._event(meta["namespace"], name, "FailedScheduling", UNSCHEDULABLE)

    def _event(self, namespace: str, pod: str, reason: str, message: str) -> None:
        self.fake.put("events", {"metadata": {"name": f"{pod}.{reason.lower()}", "namespace": namespace},
                                 "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace},
                                 "reason": reason, "message": message, "type": "Warning",
                                 "lastTimestamp": "2026-01-01T00:00:00Z"})

    def _status(self, deployment: dict[str, Any], replicas: int, updated: int, available: int,
                progressing: tuple[str, str]) -> None:
        meta = deployment["metadata"]
        status = {"observedGeneration": meta["generation"], "replicas": replicas, "updatedReplicas": updated,
                  "readyReplicas": available, "availableReplicas": available,
                  "conditions": [{"type": "Available", "status": "True" if available else "False"},
                                 {"type": "Progressing", "status": progressing[0], "reason": progressing[1]}]}
        with self.fake.lock:
            current = self.fake.get("deployments", meta["namespace"], meta["name"])
            if current is None or current.get("metadata", {}).get("generation") != meta["generation"] \
                    or current.get("status") == status:
                return  # deleted, changed meanwhile, or nothing new
            self.fake.put("deployments", {**current, "status": status})

    def _collect(self, deployments: list[dict[str, Any]]) -> None:
        """Delete the pods of deleted Deployments, as the garbage collector would."""
        alive = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in deployments}
        for key in [k for k in self._seen if k not in alive]:
            for pod in self._pods(key):
                self.fake.remove("pods", key[0], pod["metadata"]["name"])
            del self._seen[key]


@contextmanager
def controller(fake: FakeKube, behaviour: Behaviour) -> Iterator[DeploymentController]:
    """Run a DeploymentController on ``fake`` for the duration of the block."""
    ctl = DeploymentController(fake, behaviour)
    thread = threading.Thread(target=ctl.run, name="fake-deployment-controller", daemon=True)
    thread.start()
    try:
        yield ctl
    finally:
        ctl._stop.set()
        thread.join(timeout=5)
