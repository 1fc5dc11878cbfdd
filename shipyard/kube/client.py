"""Build a lightkube client the standard way (in-cluster service account, else KUBECONFIG or ~/.kube/config).

A kubeconfig file and a context can be named instead, so inference can run on another cluster than training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import httpx2
from lightkube import ApiError, Client, ConfigError, KubeConfig
from lightkube.config.kubeconfig import SingleConfig

from shipyard.errors import KubeError


def client(namespace: str, config: KubeConfig | None = None, *, kubeconfig: Path | None = None,
           context: str | None = None) -> Client:
    """Return a client whose default namespace is ``namespace``; fail with one line if there is no config.

    Args:
        kubeconfig: read this file rather than the environment's configuration.
        context: use this context of the configuration rather than its current one.
    """
    try:
        if config is None:
            config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        chosen: KubeConfig | SingleConfig | None = config
        if context is not None:
            if context not in config.contexts:
                where = f" in {kubeconfig}" if kubeconfig else ""
                known = ", ".join(sorted(config.contexts))
                raise KubeError(f"kube context '{context}' not found{where} (known: {known})")
            chosen = config.get(context)
        return Client(config=chosen, namespace=namespace, field_manager="shipyard")
    except ConfigError as exc:
        raise KubeError(f"no Kubernetes configuration found ({exc}); set KUBECONFIG or run in the cluster") from exc


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn lightkube and connection errors into one-line KubeErrors naming ``what`` was being done."""
    try:
        yield
    except ApiError as exc:
        raise KubeError(f"Kubernetes API refused to {what}: {exc.status.code} {exc.status.message}") from exc
    except (httpx.HTTPError, httpx2.HTTPError) as exc:  # lightkube 1.x talks through httpx2
        raise KubeError(f"Kubernetes API unreachable while trying to {what}: {exc}") from exc
