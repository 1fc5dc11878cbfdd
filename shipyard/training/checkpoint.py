"""Checkpoints in the store: written atomically with a checksum, newest valid one wins on resume."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from shipyard.errors import StoreError
from shipyard.storage import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: where the run stopped and everything needed to continue."""

    epoch: int  # epochs fully completed
    step: int  # optimizer steps taken in total
    state: dict[str, Any]


def _name(step: int) -> str:
    return f"step-{step:010d}"


def save(store: Store, prefix: tuple[str, ...], epoch: int, step: int, state: dict[str, Any],
         reason: str = "scheduled") -> str:
    """Write a checkpoint and its checksum sidecar (the sidecar last, so it marks completion).

    ``reason`` ("scheduled", "epoch" or "preempted") is kept in the sidecar for people and tests.
    """
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "step": step, **state}, buffer)
    data = buffer.getvalue()
    name = _name(step)
    store.write_bytes(data, *prefix, f"{name}.pt")
    meta = {"epoch": epoch, "step": step, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "reason": reason}
    store.write_bytes(json.dumps(meta).encode(), *prefix, f"{name}.json")
    log.info("checkpoint (%s) epoch=%d step=%d written to %s", reason, epoch, step, store.url(*prefix, f"{name}.pt"))
    return store.url(*prefix, f"{name}.pt")


def latest(store: Store, prefix: tuple[str, ...]) -> Checkpoint | None:
    """Load the newest checkpoint whose bytes match its checksum, skipping corrupt ones."""
    sidecars = sorted((n for n in store.list(*prefix) if n.endswith(".json")), reverse=True)
    for sidecar in sidecars:
        name = sidecar.removesuffix(".json")
        try:
            meta = json.loads(store.read_bytes(*prefix, sidecar))
            data = store.read_bytes(*prefix, f"{name}.pt")
        except (StoreError, ValueError) as exc:
            log.warning("checkpoint %s unreadable (%s); trying the previous one", name, exc)
            continue
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            log.warning("checkpoint %s is corrupt (checksum mismatch); trying the previous one", name)
            continue
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        return Checkpoint(epoch=int(state.pop("epoch")), step=int(state.pop("step")), state=state)
    return None
