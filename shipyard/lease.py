"""A mutual-exclusion lease in the store, made of create-only objects only (no deletes, no overwrites).

``<prefix>/<n>.lease`` names holder ``n``; ``<prefix>/<n>.done`` ends its tenure. To acquire, list the
prefix: when the highest lease has a ``.done`` (or there is none), write ``<n+1>.lease`` create-only; of
two processes racing for the same number exactly one succeeds. A holder killed with -9 never writes its
``.done``; once its lease is older than ``ttl`` any waiter ends it (create-only too, so only one does).
A waiter that can see the holder's process (same host, boot and pid namespace) ends the lease at once
when that process is gone: a pipeline killed while holding a lease does not hold up its rerun for ``ttl``.

A holder that may keep the lease longer than ``ttl`` (a training run) passes ``heartbeat``: while it holds
the lease it writes ``<n>.beat-<k>`` every ``heartbeat`` seconds, and a lease's age counts from its newest
beat, so a live holder is never taken for a dead one and a dead one is ended ``ttl`` after its last beat.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from shipyard import processes
from shipyard.errors import ShipyardError
from shipyard.storage import AlreadyExists, Store

log = logging.getLogger(__name__)

__all__ = ["lease"]


@contextmanager
def lease(store: Store, prefix: tuple[str, ...], purpose: str, ttl: float = 900.0, wait: float | None = 1800.0,
          poll: float = 0.25, *, heartbeat: float | None = None, error: type[ShipyardError] = ShipyardError,
          on_wait: Callable[[str], None] | None = None) -> Iterator[int]:
    """Hold the lease on ``prefix`` for the body; yield the lease number.

    ``wait`` None waits as long as the holder is alive; ``on_wait`` is told once who holds the lease.
    """
    number = _acquire(store, prefix, purpose, ttl, wait, poll, error, on_wait)
    stop = threading.Event()
    beats = None
    if heartbeat is not None:
        beats = threading.Thread(target=_beat, args=(store, prefix, number, heartbeat, stop), daemon=True,
                                 name=f"lease-heartbeat-{number}")
        beats.start()
    try:
        yield number
    finally:
        stop.set()
        if beats is not None:
            beats.join()
        _end(store, prefix, number, "released")


def _acquire(store: Store, prefix: tuple[str, ...], purpose: str, ttl: float, wait: float | None, poll: float,
             error: type[ShipyardError], on_wait: Callable[[str], None] | None) -> int:
    deadline = None if wait is None else time.monotonic() + wait
    me = {"owner": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", "purpose": purpose,
          **_identity(os.getpid())}
    told = False
    while True:
        names = set(store.list(*prefix))
        leases = [int(n.removesuffix(".lease")) for n in names if n.endswith(".lease")]
        top = max(leases, default=0)
        if top and f"{top}.done" not in names:
            holder = _read(store, prefix, f"{top}.lease")
            if _died(holder):
                log.warning("lease %s/%d is held by %s, which is no longer running; ending it",
                            store.url(*prefix), top, holder.get("owner"))
                _end(store, prefix, top, "holder died")
            elif _age(store, prefix, top, names) > ttl:
                log.warning("lease %s/%d is older than %ss without being released; ending it",
                            store.url(*prefix), top, ttl)
                _end(store, prefix, top, "expired")
            elif deadline is not None and time.monotonic() > deadline:
                raise error(f"lease {store.url(*prefix)} is held by {_holder(store, prefix, top)} for longer "
                            f"than {wait:.0f}s; try again later")
            else:
                if on_wait is not None and not told:
                    on_wait(_holder(store, prefix, top))
                    told = True
                time.sleep(poll)
            continue
        body = {**me, "at": _now()}
        try:
            store.write_bytes(json.dumps(body).encode(), *prefix, f"{top + 1}.lease", create_only=True)
        except AlreadyExists:
            continue  # someone else took this number first
        return top + 1


def _beat(store: Store, prefix: tuple[str, ...], number: int, every: float, stop: threading.Event) -> None:
    """Write ``<number>.beat-<k>`` every ``every`` seconds until ``stop`` is set."""
    count = 0
    while not stop.wait(every):
        count += 1
        try:
            store.write_bytes(json.dumps({"at": _now()}).encode(), *prefix, f"{number}.beat-{count}",
                              create_only=True)
        except ShipyardError as exc:  # a missed beat only brings the expiry closer; the next one may pass
            log.warning("lease %s/%d: heartbeat failed: %s", store.url(*prefix), number, exc)


def _end(store: Store, prefix: tuple[str, ...], number: int, why: str) -> None:
    body = json.dumps({"why": why, "at": _now()}).encode()
    try:
        store.write_bytes(body, *prefix, f"{number}.done", create_only=True)
    except AlreadyExists:
        pass  # ended already (an expired lease ended by a waiter)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _read(store: Store, prefix: tuple[str, ...], name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(store.read_bytes(*prefix, name))
    return data


def _age(store: Store, prefix: tuple[str, ...], number: int, names: set[str]) -> float:
    """Return the seconds since the lease was taken or, if it beats, since its newest beat."""
    beat = re.compile(rf"{number}\.beat-(\d+)")
    beats = [int(m.group(1)) for m in map(beat.fullmatch, names) if m]
    newest = f"{number}.beat-{max(beats)}" if beats else f"{number}.lease"
    at = datetime.fromisoformat(_read(store, prefix, newest)["at"])
    return (datetime.now(UTC) - at).total_seconds()


def _holder(store: Store, prefix: tuple[str, ...], number: int) -> str:
    body = _read(store, prefix, f"{number}.lease")
    return f"{body.get('owner')} ({body.get('purpose')}, since {body.get('at')})"


def _identity(pid: int) -> dict[str, str]:
    """Say where process ``pid`` runs, precisely enough for another process there to tell it is gone."""
    return {"host": socket.gethostname(), "boot_id": processes.boot_id() or "", "pid_ns": _pid_namespace(),
            "pid": str(pid), "started": str(processes.start_time(pid) or "")}


def _died(body: dict[str, str]) -> bool:
    """Tell whether the holder ran where we can see it (same host, boot, pid namespace) and is gone now."""
    here = _identity(os.getpid())
    if not body.get("pid") or not body.get("started") or not here["boot_id"] or not here["pid_ns"]:
        return False  # an older lease, or no way to tell: wait for the ttl
    if any(body.get(k) != here[k] for k in ("host", "boot_id", "pid_ns")):
        return False
    now = processes.start_time(int(body["pid"]))
    return now is None or abs(now - float(body["started"])) > processes.START_TOLERANCE


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
