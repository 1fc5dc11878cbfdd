"""Background services on this machine (Prefect server, MLflow UI, worker, inference server).

Each runs in its own session so that it outlives the command that started it; its pid, URL and log
live in ``<home>/run/<name>.json`` so that later commands (``status``, ``down``) can find it.

A pid alone does not name a process: after the service exits (or the machine reboots) the kernel hands
the number to someone else. So a record also carries the process's start time and the boot it started
in, and a record whose pid now belongs to another process is stale: it is removed and that process is
never signalled. Starting and stopping a service holds ``<home>/run/<name>.lock`` (``flock``), so two
``shipyard up`` at once start one server: the second waits, then finds the first one's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from pydantic import BaseModel, ValidationError

from shipyard.errors import ShipyardError

log = logging.getLogger(__name__)

PROC = Path("/proc")
# Linux start times are exact clock ticks; psutil's estimate elsewhere can move by a second with the wall clock.
# No pid comes round again within a second of its last owner's start (the kernel cycles through pid_max).
START_TOLERANCE = 1.0


class Service(BaseModel):
    """A background process started by Shipyard."""

    name: str
    pid: int
    url: str | None
    log_path: str
    info: dict[str, str] = {}
    started: float | None = None  # seconds after boot the process started; None in records of older versions
    boot_id: str | None = None  # the boot it started in (Linux); None where unknown


def _record(home: Path, name: str) -> Path:
    return home / "run" / f"{name}.json"


def alive(pid: int) -> bool:
    """Tell whether a process is running (reaping it if it is our exited child)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def boot_id() -> str | None:
    """Return this boot's id (Linux), which changes with every reboot."""
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def start_time(pid: int) -> float | None:
    """Return when process ``pid`` started, in seconds after boot; None if there is no such process."""
    if PROC.is_dir():
        try:
            stat = (PROC / str(pid) / "stat").read_text()
        except OSError:
            return None
        # Field 22 (starttime); the command name in field 2 may hold spaces and parentheses, so count from ')'.
        return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    import psutil  # only where there is no /proc (macOS)

    try:
        return float(psutil.Process(pid).create_time() - psutil.boot_time())
    except psutil.Error:
        return None


def running(service: Service) -> bool:
    """Tell whether the recorded process itself still runs (not another one that got its pid)."""
    if service.boot_id is not None and service.boot_id != boot_id():
        return False  # recorded before a reboot
    if service.started is None or not alive(service.pid):
        return False  # an older record cannot prove the pid is still its process: leave that process alone
    now = start_time(service.pid)
    return now is not None and abs(now - service.started) <= START_TOLERANCE


def answers(url: str, timeout: float = 2) -> bool:
    """Tell whether ``url`` answers with a 2xx status."""
    try:
        return httpx.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


@contextmanager
def _locked(home: Path, name: str, blocking: bool = True) -> Iterator[bool]:
    """Hold ``<home>/run/<name>.lock`` (yield False if ``blocking`` is off and someone else holds it)."""
    path = home / "run" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def exclusive(home: Path, name: str) -> Iterator[None]:
    """Hold ``<home>/run/<name>.lock`` for the body, waiting for another holder: one-time setup done once."""
    with _locked(home, name):
        yield


def _read(home: Path, name: str) -> Service | None:
    try:
        return Service.model_validate_json(_record(home, name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        log.warning("ignoring unreadable service record %s: %s", _record(home, name), str(exc).splitlines()[0])
        return None


def _write(home: Path, service: Service) -> None:
    """Replace the record atomically: a reader sees the old one or the new one, never half of one."""
    record = _record(home, service.name)
    tmp = record.with_name(f".{record.name}.{uuid.uuid4().hex}")
    tmp.write_text(service.model_dump_json(indent=2))
    os.replace(tmp, record)


def _live(home: Path, name: str) -> Service | None:
    """Return the recorded service if its own process runs; drop a stale record (call with the lock held)."""
    service = _read(home, name)
    if service is not None and running(service):
        return service
    if _record(home, name).exists():
        if service is not None and service.started is None and alive(service.pid):
            log.warning("record of %s (pid %d) was written by an older Shipyard and cannot prove that pid is still "
                        "its process; removing the record and leaving pid %d alone (stop it by hand if it is yours)",
                        name, service.pid, service.pid)
        elif service is not None and alive(service.pid):
            log.warning("record of %s names pid %d, which is now another process (or predates a reboot); "
                        "removing the record and leaving the process alone", name, service.pid)
        _record(home, name).unlink(missing_ok=True)
    return None


def spawn(home: Path, name: str, cmd: Sequence[str], *, health_url: str | None, url: str | None = None,
          env: Mapping[str, str] | None = None, timeout: float = 120, info: dict[str, str] | None = None,
          error: type[ShipyardError] = ShipyardError) -> Service:
    """Start ``cmd`` in the background and wait until ``health_url`` answers (if given).

    If the service already runs with the same URL and info (another command started it first), return it;
    if it runs as something else, raise ``error``: a name never stands for two processes.
    """
    with _locked(home, name):
        existing = _live(home, name)
        if existing is not None:
            if existing.url == url and existing.info == (info or {}):
                log.info("%s already running (pid %d)", name, existing.pid)
                return existing
            raise error(f"{name} already runs (pid {existing.pid}, {existing.info or existing.url}); "
                        "stop it first with: shipyard down")
        return _start(home, name, cmd, health_url, url, env, timeout, info or {}, error)


def _start(home: Path, name: str, cmd: Sequence[str], health_url: str | None, url: str | None,
           env: Mapping[str, str] | None, timeout: float, info: dict[str, str],
           error: type[ShipyardError]) -> Service:
    log_path = home / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    service = Service(name=name, pid=proc.pid, url=url, log_path=str(log_path), info=info,
                      started=start_time(proc.pid), boot_id=boot_id())
    _write(home, service)  # at once, so that `down` finds it even if this command dies while it starts
    deadline = time.monotonic() + timeout
    while health_url is not None and not answers(health_url, timeout=1):
        if proc.poll() is not None:
            _record(home, name).unlink(missing_ok=True)
            raise error(f"{name} exited with code {proc.returncode} before answering {health_url} (see {log_path})")
        if time.monotonic() > deadline:
            terminate(proc.pid)
            _record(home, name).unlink(missing_ok=True)
            raise error(f"{name} did not answer {health_url} within {timeout:.0f}s (see {log_path})")
        time.sleep(0.3)
    log.info("%s started (pid %d)%s", name, proc.pid, f" at {url}" if url else "")
    return service


def wait_ready(service: Service, health_url: str, timeout: float, error: type[ShipyardError] = ShipyardError) -> None:
    """Wait until a service started without waiting (``spawn(health_url=None)``) answers ``health_url``."""
    deadline = time.monotonic() + timeout
    while not answers(health_url, timeout=1):
        if not alive(service.pid):
            raise error(f"{service.name} exited before answering {health_url} (see {service.log_path})")
        if time.monotonic() > deadline:
            raise error(f"{service.name} did not answer {health_url} within {timeout:.0f}s (see {service.log_path}; "
                        "it keeps starting in the background: try again in a minute)")
        time.sleep(0.2)


def find(home: Path, name: str) -> Service | None:
    """Return the recorded service if its own process still runs (waits while it is being started or stopped)."""
    if not _record(home, name).exists():
        return None  # nothing recorded: no need to create <home>/run for the lock
    with _locked(home, name):
        return _live(home, name)


def terminate(pid: int, grace: float = 10, started: float | None = None, again_after: float | None = None) -> None:
    """Stop a process group: SIGTERM, then SIGKILL to whatever of it still runs after ``grace`` seconds.

    With ``started``, the SIGKILL is only sent while ``pid`` is still the process that started then (or, once it
    has exited, while its group still has members: Linux never hands out a process group's id while it does).
    With ``again_after``, a leader still running after that many seconds gets a second SIGTERM, which some
    programs take as "stop now" (Prefect's worker, which ignores the first one while it is idle).
    """
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    now = time.monotonic()
    deadline, again = now + grace, None if again_after is None else now + again_after
    while time.monotonic() < deadline and _group_alive(pid):
        if again is not None and time.monotonic() >= again:
            again = None
            if alive(pid) and _same_process(pid, started):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.1)
    if _group_alive(pid) and (not alive(pid) or _same_process(pid, started)):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def _group_alive(pgid: int) -> bool:
    """Tell whether any process of the group ``pgid`` still runs (reaping its leader if it is our exited child)."""
    alive(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_process(pid: int, started: float | None) -> bool:
    """Tell whether ``pid`` is still the process that started at ``started`` (True when that is unknown)."""
    now = start_time(pid)
    return started is None or (now is not None and abs(now - started) <= START_TOLERANCE)


def stop(home: Path, name: str, again_after: float | None = None) -> Service | None:
    """Stop a recorded service and forget it; return it if it was running.

    A stale record (its pid now another process's, or from before a reboot) is removed without a signal.
    ``again_after``: see :func:`terminate`.
    """
    if not _record(home, name).exists():
        return None
    with _locked(home, name):
        service = _live(home, name)
        if service is None:
            return None
        terminate(service.pid, started=service.started, again_after=again_after)
        _record(home, name).unlink(missing_ok=True)
        return service


def annotate(home: Path, name: str, info: dict[str, str]) -> Service | None:
    """Replace the ``info`` of a recorded, running service (atomically); return the updated record."""
    service = find(home, name)
    if service is None:
        return None
    updated = service.model_copy(update={"info": info})
    record = _record(home, name)
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(updated.model_dump_json(indent=2))
    os.replace(tmp, record)
    return updated
