"""Guarantee 4: `shipyard down` signals only what Shipyard started; stale records go; one server per name.

Real processes throughout: an HTTP server stands for a service, `sleep` for an unrelated process that
got a recorded pid, and concurrent starts run in separate Python processes as two `shipyard up` would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard import processes
from shipyard.errors import ShipyardError
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
SHIPYARD = str(Path(sys.executable).with_name("shipyard"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / ".shipyard"  # what SHIPYARD_HOME points at in every test (tests/conftest.py)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process Shipyard did not start (it stands for whoever got a service's old pid)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def _http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]


def _write_record(home: Path, name: str, pid: int, **fields: object) -> Path:
    record = home / "run" / f"{name}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"name": name, "pid": pid, "url": None, "log_path": "", **fields}))
    return record


def _down() -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIPYARD, "down"], capture_output=True, text=True, timeout=120)


def _servers_on(port: int) -> list[int]:
    """Return the pids of every process running this test's HTTP server command (read from /proc)."""
    wanted = "\0".join(_http_server(port)[1:])
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted in (entry / "cmdline").read_bytes().decode():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_down_stops_the_service_it_started(home: Path) -> None:
    port = free_port()
    service = processes.spawn(home, "worker", _http_server(port), health_url=f"http://127.0.0.1:{port}/")
    assert service.started is not None and processes.find(home, "worker") == service

    done = _down()
    assert done.returncode == 0 and "Stopped: worker" in done.stdout
    assert not processes.alive(service.pid)
    assert not (home / "run" / "worker.json").exists()


# Stands for Prefect 3.9's process worker: ignores the first SIGTERM (it keeps running while idle), stops on the
# second. Says in its file what happened to it.
_STUBBORN = textwrap.dedent("""
    import pathlib, signal, sys, time
    out, seen = pathlib.Path(sys.argv[1]), []
    def on_term(*_):
        seen.append(1)
        out.write_text(f"SIGTERM {len(seen)}")
        if len(seen) == 2:
            out.write_text("stopped on the second SIGTERM")
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    out.write_text("ready")
    while True:
        time.sleep(0.05)
""")


def test_down_asks_a_worker_that_ignores_its_first_sigterm_again_instead_of_killing_it(
        home: Path, tmp_path: Path) -> None:
    said = tmp_path / "worker-said"
    service = processes.spawn(home, "worker", [sys.executable, "-c", _STUBBORN, str(said)], health_url=None)
    while not said.exists() or said.read_text() != "ready":
        time.sleep(0.05)
    done = _down()
    assert done.returncode == 0 and "Stopped: worker" in done.stdout
    assert said.read_text() == "stopped on the second SIGTERM"  # not SIGKILLed at the end of the grace
    assert not processes.alive(service.pid)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_group_member_still_running_after_its_leader_exited_is_killed(home: Path, tmp_path: Path) -> None:
    # A service's leader that exits on SIGTERM, leaving a child in its process group that ignores it: before, the
    # stop ended with the leader and the child ran on.
    child_pid = tmp_path / "child.pid"
    child = (f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             f"open({str(child_pid)!r}, 'w').write(str(os.getpid())); time.sleep(600)")
    leader = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(600)"
    service = processes.spawn(home, "stubborn-child", [sys.executable, "-c", leader], health_url=None)
    while not child_pid.exists() or not child_pid.read_text():  # written once it ignores SIGTERM
        time.sleep(0.05)
    child_process = int(child_pid.read_text())
    processes.terminate(service.pid, grace=1.0, started=service.started)
    assert not processes.alive(service.pid)
    for _ in range(100):  # SIGKILLed; its parent gone, init reaps it
        if not _running(child_process):
            break
        time.sleep(0.05)
    assert not _running(child_process)


def test_down_leaves_a_process_that_reused_a_recorded_pid_alone(home: Path,
                                                               bystander: subprocess.Popen[bytes]) -> None:
    started = processes.start_time(bystander.pid)
    assert started is not None
    # The recorded worker exited long ago and the kernel gave its pid to the bystander.
    record = _write_record(home, "worker", bystander.pid, started=started - 1000, boot_id=processes.boot_id())
    assert processes.find(home, "worker") is None

    _write_record(home, "worker", bystander.pid, started=started - 1000, boot_id=processes.boot_id())
    done = _down()
    assert done.returncode == 0 and "Nothing was running." in done.stdout
    assert bystander.poll() is None  # not signalled
    assert not record.exists()  # the stale record is gone


def test_a_record_from_an_older_version_without_a_start_time_is_not_trusted(
        home: Path, bystander: subprocess.Popen[bytes]) -> None:
    record = _write_record(home, "mlflow-ui", bystander.pid)
    assert processes.stop(home, "mlflow-ui") is None
    assert bystander.poll() is None and not record.exists()


def test_a_record_from_before_a_reboot_is_cleaned_up_and_its_pid_left_alone(
        home: Path, bystander: subprocess.Popen[bytes]) -> None:
    # Same pid and even the same start time after boot: only the boot id tells the two boots apart.
    record = _write_record(home, "prefect-server", bystander.pid, started=processes.start_time(bystander.pid),
                           boot_id="00000000-0000-0000-0000-000000000000")
    status = subprocess.run([SHIPYARD, "status"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0
    assert "prefect-server: stopped" in status.stdout.replace("  ", "")
    assert not record.exists()
    assert _down().returncode == 0 and bystander.poll() is None


def test_a_corrupt_record_is_dropped_not_a_traceback(home: Path) -> None:
    record = home / "run" / "worker.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"name": "worker", "pid": ')  # an older writer killed mid-write
    done = _down()
    assert done.returncode == 0 and "Nothing was running." in done.stdout and not record.exists()


SPAWN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from shipyard import processes
    port, at = sys.argv[2], float(sys.argv[3])
    while time.time() < at:  # every starter calls spawn at the same instant, after its imports
        pass
    service = processes.spawn(Path(sys.argv[1]), "prefect-server",
                              [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", port],
                              health_url=f"http://127.0.0.1:{port}/", url=f"http://127.0.0.1:{port}")
    print(service.pid)
""")


def test_concurrent_starts_of_one_service_start_one_process(home: Path) -> None:
    port, at = free_port(), time.time() + 8
    starters = [subprocess.Popen([sys.executable, "-c", SPAWN, str(home), str(port), str(at)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
                for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in starters]
    try:
        assert all(p.returncode == 0 for p in starters), [err for _, err in outputs]
        pids = {int(out.strip()) for out, _ in outputs}
        assert len(pids) == 1  # every starter got the same service
        assert _servers_on(port) == list(pids)  # and only one server process runs
    finally:
        for pid in _servers_on(port):
            os.killpg(pid, signal.SIGKILL)


def test_a_name_never_stands_for_two_processes(home: Path) -> None:
    port = free_port()
    first = processes.spawn(home, "inference", _http_server(port), health_url=f"http://127.0.0.1:{port}/",
                            info={"model_version": "1"})
    try:
        with pytest.raises(ShipyardError, match=r"inference already runs \(pid \d+"):
            processes.spawn(home, "inference", _http_server(free_port()), health_url=None,
                            info={"model_version": "2"})
        assert processes.find(home, "inference") == first
    finally:
        assert processes.stop(home, "inference") == first
    assert not processes.alive(first.pid)


def test_a_service_that_dies_while_starting_leaves_no_record(home: Path) -> None:
    with pytest.raises(ShipyardError, match=r"worker exited with code 3 before answering"):
        processes.spawn(home, "worker", [sys.executable, "-c", "raise SystemExit(3)"],
                        health_url=f"http://127.0.0.1:{free_port()}/")
    assert not (home / "run" / "worker.json").exists()


SLOW_START = textwrap.dedent("""
    import sys
    from pathlib import Path
    from shipyard import processes
    processes.spawn(Path(sys.argv[1]), "mlflow-ui", ["sleep", "600"], health_url="http://127.0.0.1:9/", timeout=600)
""")


def test_a_service_whose_starter_was_killed_mid_start_is_still_stopped_by_down(home: Path) -> None:
    starter = subprocess.Popen([sys.executable, "-c", SLOW_START, str(home)], cwd=REPO)
    record = home / "run" / "mlflow-ui.json"
    try:
        for _ in range(300):
            if record.exists() or starter.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        pid = json.loads(record.read_text())["pid"]
    finally:
        starter.kill()  # kill -9 while the service has not answered yet
        starter.wait()
    try:
        done = _down()
        assert done.returncode == 0 and "mlflow-ui" in done.stdout
        assert not processes.alive(pid) and not record.exists()
    finally:
        if processes.alive(pid):
            os.killpg(pid, signal.SIGKILL)  # whatever failed, leave no `sleep` behind
