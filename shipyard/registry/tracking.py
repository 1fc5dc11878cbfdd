"""The MLflow boundary: build the client, translate its errors once, and tell "absent" from "failed".

Only MLflow's ``RESOURCE_DOES_NOT_EXIST`` means a model, version or alias is absent. Any other error
(authentication, an outage, a timeout) is a :class:`RegistryError` naming the tracking URI, and is never
read as "no champion".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from shipyard import processes
from shipyard.errors import RegistryError
from shipyard.settings import Settings, redact
from shipyard.storage import Store

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

SETTING = "SHIPYARD_MLFLOW_TRACKING_URI"
ABSENT = "RESOURCE_DOES_NOT_EXIST"


@contextmanager
def translate(uri: str) -> Iterator[None]:
    """Turn MLflow and connection errors into one-line RegistryErrors naming the URI and setting."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RegistryError:
        raise
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0] if exc.message else type(exc).__name__
        raise RegistryError(f"MLflow at {redact(uri)} ({SETTING}) failed: {first[:300]}") from exc
    except (OSError, ConnectionError) as exc:
        raise RegistryError(f"MLflow at {redact(uri)} ({SETTING}) is unreachable: {exc}") from exc


def client(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured tracking URI and return a client (for use inside tasks)."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_uri()
    if redact(uri) != uri:
        # MLflow prints "View run ... at: <tracking URI>/#/..." on stdout when a run ends, user-info and all.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not settings.is_local_mlflow() or uri in _SCHEMA_READY:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    # MLflow creates a fresh database's tables on first use (building the client), unguarded: two processes
    # doing it together fail (alembic "expected to match one row"). The first use waits for the others here.
    settings.home.mkdir(parents=True, exist_ok=True)
    with processes.exclusive(settings.home, SCHEMA_LOCK), translate(uri):
        built = MlflowClient(tracking_uri=uri, registry_uri=uri)  # the tracking store's tables
        built.search_registered_models(max_results=1)  # the registry store's tables
    _SCHEMA_READY.add(uri)
    return built


# Local databases whose tables this process has seen created (no lock needed again), and the lock's name.
_SCHEMA_READY: set[str] = set()
SCHEMA_LOCK = "mlflow-db"


def uri_of(mlflow_client: MlflowClient) -> str:
    """Return the tracking URI a client talks to (for messages)."""
    return str(mlflow_client._registry_uri)


def check(settings: Settings) -> None:
    """Fail with one line if the tracking server cannot be reached."""
    uri = settings.resolved_mlflow_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(_health_request(uri), timeout=5) as resp:  # noqa: S310 (http(s) only)
            resp.read()
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(f"MLflow at {redact(uri)} ({SETTING}) is unreachable: {reason}") from exc


def _health_request(uri: str) -> Any:
    """Return the request for ``<uri>/health``, user-info sent as basic auth as MLflow's client does (urllib
    would take it for part of the host)."""
    import base64
    import urllib.request
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    url = f"{uri.rstrip('/')}/health"
    if parts.username is None and parts.password is None:
        return urllib.request.Request(url)  # noqa: S310 - check() calls this for http(s) URIs only
    netloc = parts.netloc.rsplit("@", 1)[1]
    userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    url = urlunsplit((parts.scheme, netloc, f"{parts.path.rstrip('/')}/health", "", ""))
    auth = "Basic " + base64.b64encode(userinfo.encode()).decode()
    return urllib.request.Request(url, headers={"Authorization": auth})  # noqa: S310 - http(s) only, as above


def is_absent(exc: BaseException) -> bool:
    """Tell whether an MLflow error says the thing asked for does not exist (and nothing else)."""
    return getattr(exc, "error_code", None) == ABSENT


def registered_model(mlflow_client: MlflowClient, model_name: str) -> RegisteredModel | None:
    """Return the registered model; None only if MLflow says it does not exist."""
    from mlflow.exceptions import MlflowException

    with translate(uri_of(mlflow_client)):
        try:
            return mlflow_client.get_registered_model(model_name)
        except MlflowException as exc:
            if is_absent(exc):
                return None
            raise


def aliases(mlflow_client: MlflowClient, model_name: str) -> dict[str, str]:
    """Return alias -> version of a registered model ({} if the model does not exist yet).

    Read from the registered model rather than by alias: MLflow answers a missing alias with
    INVALID_PARAMETER_VALUE, which cannot be told apart from a real error.
    """
    found = registered_model(mlflow_client, model_name)
    return {str(k): str(v) for k, v in (found.aliases if found else {}).items()}


def alias_version(mlflow_client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """Return the version holding ``alias``, or None if the model or the alias does not exist."""
    version = aliases(mlflow_client, model_name).get(alias)
    if version is None:
        return None
    with translate(uri_of(mlflow_client)):
        return mlflow_client.get_model_version(model_name, version)


def model_tags(mlflow_client: MlflowClient, model_name: str) -> dict[str, str]:
    """Return the registered model's tags ({} if the model does not exist yet)."""
    found = registered_model(mlflow_client, model_name)
    return {str(k): str(v) for k, v in (found.tags if found else {}).items()}


def ensure_experiment(mlflow_client: MlflowClient, settings: Settings, store: Store) -> str:
    """Return the experiment id, creating it (artifacts beside the store when MLflow is local).

    Two pipelines may create it at once: the one that loses reads the winner's.
    """
    from mlflow.exceptions import MlflowException

    name = settings.mlflow_experiment
    with translate(settings.resolved_mlflow_uri()):
        found = mlflow_client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = store.url("mlflow-artifacts") if settings.is_local_mlflow() else None
        if location and store.is_local:
            location = f"file://{location}"
        try:
            return str(mlflow_client.create_experiment(name, artifact_location=location))
        except MlflowException as exc:
            raced = mlflow_client.get_experiment_by_name(name)
            if exc.error_code != "RESOURCE_ALREADY_EXISTS" or raced is None:
                raise
            return str(raced.experiment_id)
