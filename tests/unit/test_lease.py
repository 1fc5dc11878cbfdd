"""Store leases: one holder at a time, a holder killed with -9 is ended after its ttl, nothing is overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shipyard.errors import RegistryError
from shipyard.lease import _identity
from shipyard.registry.lease import lease
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem

PREFIX = ("registry", "m", "aliases")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return filesystem(Settings(store_uri=str(tmp_path / "store")))


def test_holders_never_overlap(store: Store) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    def hold() -> None:
        for _ in range(5):
            with lease(store, PREFIX, "test", poll=0.001):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                time.sleep(0.002)
                inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    assert sorted(store.list(*PREFIX)) == sorted([f"{n}.lease" for n in range(1, 21)] +
                                                 [f"{n}.done" for n in range(1, 21)])


def test_a_lease_left_by_a_killed_holder_is_ended_after_its_ttl(store: Store) -> None:
    stale = {"owner": "gone:1", "purpose": "killed", "at": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    store.write_bytes(json.dumps(stale).encode(), *PREFIX, "1.lease", create_only=True)
    with lease(store, PREFIX, "next", ttl=60) as number:
        assert number == 2
    assert json.loads(store.read_bytes(*PREFIX, "1.done"))["why"] == "expired"


def test_waiting_too_long_names_the_holder(store: Store) -> None:
    with lease(store, PREFIX, "first holder"):
        with pytest.raises(RegistryError, match="first holder"):
            with lease(store, PREFIX, "second", wait=0.2, poll=0.05):
                pass


def _held_by(store: Store, proc: subprocess.Popen[bytes]) -> None:
    """Write lease 1 as ``proc`` would have (written a second ago, far within any ttl)."""
    body = {"owner": f"here:{proc.pid}", "purpose": "register", **_identity(proc.pid),
            "at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
    store.write_bytes(json.dumps(body).encode(), *PREFIX, "1.lease", create_only=True)


def test_a_lease_whose_holder_was_killed_on_this_machine_is_ended_at_once(store: Store) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _held_by(store, holder)
    holder.kill()  # SIGKILL: no chance to write its .done
    holder.wait()
    with lease(store, PREFIX, "the rerun", ttl=3600, wait=30) as number:  # without the check: 30 s, then an error
        assert number == 2
    assert json.loads(store.read_bytes(*PREFIX, "1.done"))["why"] == "holder died"


def test_a_lease_whose_holder_still_runs_is_not_taken(store: Store) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _held_by(store, holder)
        with pytest.raises(RegistryError, match="is held by here:"):
            with lease(store, PREFIX, "second", ttl=3600, wait=0.5, poll=0.05):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_that_beats_is_not_ended_past_its_ttl_and_a_silent_one_is(store: Store) -> None:
    from shipyard.lease import lease as beating_lease

    waited: list[str] = []
    with beating_lease(store, PREFIX, "long training", ttl=0.6, heartbeat=0.1):
        with pytest.raises(RegistryError, match="long training"):  # alive for 4 ttls: never taken for dead
            with beating_lease(store, PREFIX, "second", ttl=0.6, wait=2.4, poll=0.05, error=RegistryError,
                               on_wait=waited.append):
                pass
    assert waited and "long training" in waited[0]  # the waiter was told who holds it, once
    assert "1.done" in store.list(*PREFIX) and any(n.startswith("1.beat-") for n in store.list(*PREFIX))
    assert json.loads(store.read_bytes(*PREFIX, "1.done"))["why"] == "released"

    stale = {"owner": "gone:1", "purpose": "killed", "at": datetime.now(UTC).isoformat()}
    store.write_bytes(json.dumps(stale).encode(), *PREFIX, "3.lease", create_only=True)
    with beating_lease(store, PREFIX, "next", ttl=0.3, poll=0.05) as number:  # no beats: ended after its ttl
        assert number == 4
    assert json.loads(store.read_bytes(*PREFIX, "3.done"))["why"] == "expired"
