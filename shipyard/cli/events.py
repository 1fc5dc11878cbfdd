"""Tell the Prefect server about what a command did, so that deployment triggers can react."""

from __future__ import annotations

from shipyard.cli.runtime import choose_prefect_api
from shipyard.datasets import Manifest
from shipyard.settings import Settings
from shipyard.storage import Store


def announce_staged(settings: Settings, store: Store, manifest: Manifest) -> str | None:
    """Emit the dataset-staged event to the configured or local Prefect server; return its URL, or None."""
    api_url = choose_prefect_api(settings)
    if api_url is None:  # no lasting server, so no trigger could be listening
        return None
    from tasks.events import emit_dataset_staged  # imports Prefect, which reads PREFECT_API_URL set above

    return api_url if emit_dataset_staged(store, manifest, "command", flush=True) else None
