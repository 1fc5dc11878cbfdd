"""Retry only what can succeed on a second try."""

from __future__ import annotations

from typing import Any

from shipyard.errors import RegistryError, StoreError


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry store and registry failures (network, throttling); never bad input or code errors."""
    try:
        state.result()
    except (StoreError, RegistryError):
        return True
    except Exception:  # noqa: BLE001 - anything else is not worth retrying
        return False
    return False
