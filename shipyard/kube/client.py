"""Build a lightkube client the standard way (in-cluster service account, else KUBECONFIG or ~/.kube/config)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from lightkube import ApiError, Client, ConfigError, KubeConfig

from shipyard.errors import KubeError


def client(namespace: str, config: KubeConfig | None = None) -> Client:
    """Return a client whose default namespace is ``namespace``; fail with one line if there is no config."""
    try:
        config = config or KubeConfig.from_env()
        return Client(config=config, namespace=namespace, field_manager="shipyard")
    except ConfigError as exc:
        raise KubeError(f"no Kubernetes configuration found ({exc}); set KUBECONFIG or run in the cluster") from exc


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn lightkube and connection errors into one-line KubeErrors naming ``what`` was being done."""
    try:
        yield
    except ApiError as exc:
        raise KubeError(f"Kubernetes API refused to {what}: {exc.status.code} {exc.status.message}") from exc
    except httpx.HTTPError as exc:
        raise KubeError(f"Kubernetes API unreachable while trying to {what}: {exc}") from exc
