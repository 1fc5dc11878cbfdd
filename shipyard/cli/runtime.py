"""Choose the Prefect API before Prefect is imported: a configured URL, the local server, or ephemeral."""

from __future__ import annotations

import os

from shipyard.processes import answers
from shipyard.settings import Settings


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
    return url


def ui_url(api_url: str | None, path: str) -> str | None:
    """Return a link into the Prefect UI for ``path`` (None without a lasting server)."""
    if api_url is None:
        return None
    return f"{api_url.removesuffix('/api').rstrip('/')}/{path.lstrip('/')}"
