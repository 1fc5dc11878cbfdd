"""Prefect events Shipyard emits; deployment triggers (deployments/__init__.py TRIGGERS) react to them."""

from __future__ import annotations

from prefect.events import emit_event
from prefect.events.worker import EventsWorker

from deployments import DATASET_RESOURCE, DATASET_STAGED, STAGED_BY
from shipyard import datasets
from shipyard.datasets.manifest import manifest_key
from shipyard.storage import Store


def emit_dataset_staged(store: Store, manifest: datasets.Manifest, staged_by: str, *, flush: bool = False) -> bool:
    """Announce a newly staged version (resource ``shipyard.dataset.<name>``); return whether it was sent.

    ``staged_by`` ('command' or 'pipeline') lets a trigger skip versions a pipeline already trains on.
    ``flush`` waits until the event has left this process: a short-lived command must, a flow run need not
    (Prefect drains its events worker when the run ends).
    """
    event = emit_event(
        DATASET_STAGED,
        resource={"prefect.resource.id": DATASET_RESOURCE + manifest.dataset,
                  "prefect.resource.name": manifest.dataset, STAGED_BY: staged_by},
        payload={"dataset": manifest.dataset, "version": manifest.version,
                 "manifest_uri": store.url(*manifest_key(manifest.dataset, manifest.version))},
    )
    if flush and event is not None:
        EventsWorker.drain_all(timeout=30)
    return event is not None
