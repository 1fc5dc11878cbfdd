"""Choose the Prefect API before Prefect is imported: a configured URL, or the local server, started if need be.

Commands that run flows keep the local Prefect server they start (as 'shipyard up' does): the next run then
starts at once instead of paying 10-40 s for a temporary server. 'shipyard down' stops it.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from shipyard import processes
from shipyard.errors import ShipyardError
from shipyard.processes import answers
from shipyard.settings import Settings

# Prefect's own wait for a temporary server (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, 20 s) is too
# short for a first start on a busy machine: both waits follow SHIPYARD_PREFECT_START_TIMEOUT_SECONDS instead.
EPHEMERAL_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
EPHEMERAL_TIMED_OUT = "Timed out while attempting to connect to ephemeral Prefect API server"
SERVICE = "prefect-server"


def local_prefect_url(settings: Settings) -> str:
    """Return the API URL of the local Prefect server that 'shipyard up' starts."""
    return f"http://127.0.0.1:{settings.prefect_port}/api"


def choose_prefect_api(settings: Settings) -> str | None:
    """Point Prefect at the configured or local server; return None for an ephemeral one.

    This writes PREFECT_API_URL for Prefect to read: it must run before the first ``import prefect``.
    """
    url = settings.prefect_api_url
    if url is None and answers(f"{local_prefect_url(settings)}/health", timeout=1):
        url = local_prefect_url(settings)
    if url is not None:
        os.environ["PREFECT_API_URL"] = url
    else:  # Prefect starts a temporary server: give it our timeout, unless Prefect's own setting is set
        os.environ.setdefault(EPHEMERAL_TIMEOUT, str(math.ceil(settings.prefect_start_timeout_seconds)))
    return url


def ephemeral_timeout_error(exc: BaseException) -> ShipyardError | None:
    """Return a one-line error for Prefect's "temporary server did not start" RuntimeError, else None."""
    if not isinstance(exc, RuntimeError) or not str(exc).startswith(EPHEMERAL_TIMED_OUT):
        return None
    return ShipyardError("the temporary Prefect server did not answer in time: raise "
                         "SHIPYARD_PREFECT_START_TIMEOUT_SECONDS, or start a lasting one with 'shipyard up'")


def start_local_prefect(settings: Settings) -> processes.Service | None:
    """Start the local Prefect server in the background unless a server is configured or already there.

    Returns the service when this call started it. It does not wait: call ``ready_prefect_api`` when
    Prefect is first needed, so the server boots while the command imports and checks everything else.
    """
    url = local_prefect_url(settings)
    if settings.prefect_api_url is not None or processes.find(settings.home, SERVICE) or answers(f"{url}/health"):
        return None
    env = {"PREFECT_HOME": str((settings.home / "prefect").resolve()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": url}  # the UI must call this server's API, on this port
    cmd = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
           "--port", str(settings.prefect_port)]
    return processes.spawn(settings.home, SERVICE, cmd, health_url=None, url=url, env=env)


def use_prefect_api(settings: Settings) -> str:
    """Point Prefect at the configured or local server without waiting for it; return its API URL.

    Prefect reads PREFECT_API_URL when it is imported, so call this before the first ``import prefect``;
    importing may then overlap the local server's start.
    """
    url = settings.prefect_api_url or local_prefect_url(settings)
    os.environ["PREFECT_API_URL"] = url
    return url


def ready_prefect_api(settings: Settings) -> str:
    """Wait for the configured or local Prefect server, point Prefect at it and return its API URL."""
    url = use_prefect_api(settings)
    if settings.prefect_api_url is None:
        starting = processes.find(settings.home, SERVICE)
        if starting is not None:
            processes.wait_ready(starting, f"{url}/health", settings.prefect_start_timeout_seconds)
        elif not answers(f"{url}/health", timeout=5):
            raise ShipyardError(f"the local Prefect server at {url} does not answer (start it with 'shipyard up')")
    return url


def ui_url(api_url: str | None, path: str) -> str | None:
    """Return a link into the Prefect UI for ``path`` (None without a lasting server)."""
    if api_url is None:
        return None
    return f"{api_url.removesuffix('/api').rstrip('/')}/{path.lstrip('/')}"
