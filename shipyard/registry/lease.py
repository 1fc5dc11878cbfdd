"""The registry's leases: :func:`shipyard.lease.lease`, failing with a :class:`RegistryError` when held too long."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shipyard import lease as leases
from shipyard.errors import RegistryError
from shipyard.storage import Store


@contextmanager
def lease(store: Store, prefix: tuple[str, ...], purpose: str, ttl: float = 900.0,
          wait: float = 1800.0, poll: float = 0.25) -> Iterator[int]:
    """Hold the lease on ``prefix`` for the body; yield the lease number (see :mod:`shipyard.lease`)."""
    with leases.lease(store, prefix, purpose, ttl, wait, poll, error=RegistryError) as number:
        yield number
