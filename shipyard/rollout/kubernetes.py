"""The Kubernetes rollout target: a Deployment on the inference node group, rolled and rolled back in place.

A rollout reads the Deployment that serves now (the last good spec), applies the Service, the
PodDisruptionBudget and the new Deployment server-side, waits as ``kubectl rollout status`` does, and
smoke-tests the new version through the API server's service proxy. Any failure applies the last good spec
again, waits for it, and raises a KubeError carrying the pods' reason (image pull, crash loop, scheduler,
probe) or the smoke test's answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx2
from lightkube import ApiError, Client
from lightkube.codecs import from_dict
from lightkube.config.client_adapter import Client as HttpClient
from lightkube.config.client_adapter import ConnectionParams
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod

from shipyard.errors import KubeError
from shipyard.kube import inference
from shipyard.kube.client import client as kube_client
from shipyard.kube.client import translate
from shipyard.kube.progress import pod_problems, rollout_state
from shipyard.rollout.base import Live, ModelRef, RolloutResult
from shipyard.settings import Settings

log = logging.getLogger(__name__)

FIELD_MANAGER = "shipyard-rollout"


def pinned_model(deployment: Deployment) -> ModelRef | None:
    """Return the model version a Deployment's pod template pins, or None if it is not Shipyard's."""
    template = deployment.spec.template if deployment.spec else None
    annotations = (template.metadata.annotations if template and template.metadata else None) or {}
    name, version = annotations.get(inference.MODEL_NAME_ANNOTATION), annotations.get(
        inference.MODEL_VERSION_ANNOTATION)
    return ModelRef(model_name=name, version=version) if name and version else None


class KubernetesTarget:
    """Serve registered model versions from a Deployment in the Shipyard namespace."""

    name = "kubernetes"

    def __init__(self, settings: Settings, client: Client | None = None, *, poll_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.namespace = settings.kube_namespace
        self.poll_seconds = poll_seconds
        self.clock = clock
        self._client = client

    @property
    def client(self) -> Client:
        """Return the client of the inference cluster (its own kubeconfig and context when set)."""
        if self._client is None:
            self._client = kube_client(self.namespace, kubeconfig=self.settings.inference_kubeconfig,
                                       context=self.settings.inference_kube_context)
        return self._client

    @property
    def where(self) -> str:
        """Return 'namespace/name' of the Deployment."""
        return f"{self.namespace}/{inference.NAME}"

    def live(self) -> Live | None:
        """Return the version the Deployment pins, with its replica counts and kube context; None if absent."""
        deployment = self._read()
        model = pinned_model(deployment) if deployment else None
        if deployment is None or model is None:
            return None
        status, spec = deployment.status, deployment.spec
        detail = {"deployment": self.where, "context": self.client.config.context_name,
                  "replicas": f"{(status.availableReplicas if status else 0) or 0}/{spec.replicas if spec else '?'}",
                  "image": spec.template.spec.containers[0].image or "" if spec and spec.template.spec else "",
                  "rollout": rollout_state(deployment).message}
        return Live(target=self.name, model=model, endpoint=inference.endpoint(self.settings), detail=detail)

    def roll_out(self, model: ModelRef, example: list[list[float]] | None) -> RolloutResult:
        """Roll the Deployment to ``model``; on any failure put the last good spec back and raise KubeError."""
        wanted = inference.deployment(self.settings, model.model_name, model.version)  # bad settings: nothing applied
        previous = self._read()
        previous_model = pinned_model(previous) if previous else None
        if previous is not None and not rollout_state(previous).done:
            log.warning("deployment %s was not fully rolled out before this rollout (%s); a failure restores that "
                        "spec", self.where, rollout_state(previous).message)
        log.info("rolling %s out to deployment %s (context %s)", model.uri, self.where,
                 self.client.config.context_name)
        self._apply(inference.service(self.settings))
        self._apply(inference.disruption_budget(self.settings))
        if previous is not None and previous.metadata is not None:
            # Optimistic lock: if another rollout changed the Deployment since it was read, this apply is
            # refused (409) and nothing changes, rather than rolling back someone else's version later.
            wanted["metadata"]["resourceVersion"] = previous.metadata.resourceVersion
        applied = self._apply(wanted)  # refused: nothing changed, nothing to restore
        try:
            self._wait(f"rollout of {model.uri}")
            predictions = self._smoke_test(example) if example else None
        except Exception as exc:
            restored = self._restore(previous, previous_model)
            reason = str(exc) if isinstance(exc, KubeError) else f"{type(exc).__name__}: {exc}"
            raise KubeError(f"rolling {model.uri} out to deployment {self.where} failed: {reason}; "
                            f"{restored}") from exc
        reused = previous_model == model and previous is not None and previous.metadata is not None \
            and applied.metadata is not None and previous.metadata.generation == applied.metadata.generation
        return RolloutResult(target=self.name, model=model, previous=previous_model,
                             endpoint=inference.endpoint(self.settings), reused=reused, predictions=predictions)

    def _read(self) -> Deployment | None:
        try:
            with translate(f"read deployment {self.where}"):
                return self.client.get(Deployment, inference.NAME, namespace=self.namespace)
        except KubeError as exc:
            if isinstance(exc.__cause__, ApiError) and exc.__cause__.status.code == 404:
                return None
            raise

    def _apply(self, manifest: dict[str, Any]) -> Any:
        obj = from_dict(manifest)
        with translate(f"apply {manifest['kind']} {self.namespace}/{manifest['metadata']['name']}"):
            # force: this field manager owns the endpoint; a hand edit (kubectl scale, edit) is overwritten.
            return self.client.apply(obj, field_manager=FIELD_MANAGER, force=True)

    def _wait(self, what: str) -> None:
        """Poll until the rollout is complete; raise with the pods' reason when it is past its deadline."""
        deadline = self.settings.inference_progress_deadline_seconds
        # A guard only: the controller reports a stalled rollout itself (ProgressDeadlineExceeded).
        give_up = self.clock() + deadline * (self.settings.inference_replicas + 2) + 60
        while True:
            with translate(f"read deployment {self.where}"):
                deployment = self.client.get(Deployment, inference.NAME, namespace=self.namespace)
            state = rollout_state(deployment)
            if state.done:
                return
            if state.failed or self.clock() > give_up:
                why = (f"{state.message} ({deadline}s without progress)" if state.failed
                       else f"{what} did not finish in time ({state.message})")
                problems = self._pod_problems()
                raise KubeError(f"{why}: {'; '.join(problems)}" if problems else why)
            time.sleep(self.poll_seconds)

    def _pod_problems(self) -> list[str]:
        with translate(f"list pods of deployment {self.where}"):
            pods = list(self.client.list(Pod, namespace=self.namespace, labels=dict(inference.SELECTOR)))
        return pod_problems(self.client, self.namespace, pods)

    def _smoke_test(self, example: list[list[float]]) -> list[Any]:
        """POST the example through the Service (API server proxy); check one prediction per row."""
        path = inference.proxy_path(self.namespace, "invocations")
        what = f"smoke test through service {self.namespace}/{inference.NAME}"
        try:
            with HttpClient(self.client.config, ConnectionParams(timeout=httpx2.Timeout(60.0))) as http:
                resp = http.post(path, json={"inputs": example})
        except httpx2.HTTPError as exc:
            raise KubeError(f"{what} failed: {exc}") from exc
        if resp.status_code != 200:
            raise KubeError(f"{what} got HTTP {resp.status_code}: {' '.join(resp.text.split())[:300]}")
        try:
            predictions = resp.json().get("predictions")
        except (ValueError, AttributeError):
            predictions = None
        if not isinstance(predictions, list) or len(predictions) != len(example):
            raise KubeError(f"{what} expected {len(example)} predictions, got: {' '.join(resp.text.split())[:300]}")
        return predictions

    def _restore(self, previous: Deployment | None, previous_model: ModelRef | None) -> str:
        """Apply the last good spec again and wait for it; say what is live now."""
        if previous is None:
            try:  # a failed delete is reported with the rollout's own failure, not instead of it
                with translate(f"delete deployment {self.where}"):
                    self.client.delete(Deployment, inference.NAME, namespace=self.namespace)
            except KubeError as exc:
                return f"nothing was live before, and deleting the deployment failed too: {exc}"
            log.warning("deleted deployment %s: nothing was live before", self.where)
            return "nothing was live before, so the deployment was deleted"
        meta = previous.metadata or ObjectMeta()
        # Annotations the controller or kubectl keep (revision, last-applied) stay theirs, not this manager's.
        annotations = {k: v for k, v in (meta.annotations or {}).items()
                       if not k.startswith(("deployment.kubernetes.io/", "kubectl.kubernetes.io/"))}
        restore = Deployment(metadata=ObjectMeta(name=inference.NAME, namespace=self.namespace,
                                                 labels=meta.labels, annotations=annotations or None),
                             spec=previous.spec)
        label = previous_model.uri if previous_model else "the previous spec"
        log.warning("rolling deployment %s back to %s", self.where, label)
        try:
            with translate(f"apply the last good spec of deployment {self.where}"):
                self.client.apply(restore, field_manager=FIELD_MANAGER, force=True)
            self._wait(f"rollback to {label}")
        except KubeError as exc:
            return f"rolling back to {label} failed too: {exc}"
        return f"rolled back to {label}"

