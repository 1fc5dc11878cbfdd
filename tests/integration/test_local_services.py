"""The one-machine paths a new user takes: `shipyard demo`, and `shipyard up` + the UI's Run button."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipyard import processes
from shipyard.settings import load_settings
from tests.servers import free_port

SHIPYARD = str(Path(sys.executable).with_name("shipyard"))
PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVICES = ("prefect-server", "mlflow-ui", "worker", "inference")  # what `up` and a pipeline run start


@pytest.fixture
def local_ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Free ports for every local service, and `shipyard down` afterwards whatever happened."""
    ports = {"SHIPYARD_INFERENCE_PORT": free_port(), "SHIPYARD_PREFECT_PORT": free_port(),
             "SHIPYARD_MLFLOW_UI_PORT": free_port()}
    for name, port in ports.items():
        monkeypatch.setenv(name, str(port))
    yield ports
    subprocess.run([SHIPYARD, "down"], timeout=120, check=False)


def _shipyard(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIPYARD, *args], capture_output=True, text=True, timeout=timeout)


def test_demo_prints_a_working_endpoint_and_curl_line(local_ports: dict[str, int], tmp_path: Path) -> None:
    done = _shipyard("demo")
    assert done.returncode == 0, done.stderr[-3000:]
    prefect_url = f"http://127.0.0.1:{local_ports['SHIPYARD_PREFECT_PORT']}"
    assert f"Starting the local Prefect server at {prefect_url}/; it keeps running" in done.stdout
    endpoint = f"http://127.0.0.1:{local_ports['SHIPYARD_INFERENCE_PORT']}"
    assert f"Endpoint:    {endpoint}/invocations" in done.stdout
    assert re.search(r"MLflow run:  [0-9a-f]{32}", done.stdout)
    assert re.search(rf"Prefect run: [0-9a-f-]{{36}}  \({re.escape(prefect_url)}/runs/flow-run/[0-9a-f-]{{36}}\)",
                     done.stdout)
    curl = next(line.split("Try it:", 1)[1].strip() for line in done.stdout.splitlines() if "Try it:" in line)
    answer = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60, check=True)
    probabilities = json.loads(answer.stdout)["predictions"][0]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4
    assert probabilities.index(max(probabilities)) == 0  # the curl line sends a real handwritten 0
    assert (tmp_path / ".shipyard" / "mlflow.db").exists()

    # The rerun, with Python's import log on: everything is done, so it answers before any flow starts and must
    # not import Prefect, torch or scikit-learn (seconds of a 5 s budget); a changed recipe would retrain, which
    # the training-cache tests check.
    rerun = subprocess.run([sys.executable, "-X", "importtime", "-m", "shipyard.cli", "demo"],
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in rerun.stderr.splitlines() if line.startswith("import time:")}
    assert "mlflow" in imported  # the import log is there (the registry checks need MLflow)
    heavy = {"torch", "sklearn", "matplotlib", "prefect"}
    assert not imported & heavy, sorted(imported & heavy)
    assert rerun.stdout.startswith("Nothing to do: this data is staged, trained, registered as champion and served")
    assert "Starting the local Prefect server" not in rerun.stdout and "Prefect run:" not in rerun.stdout
    assert "version 1 (champion)" in rerun.stdout and f"Endpoint:    {endpoint}/invocations" in rerun.stdout


def test_a_temporary_prefect_server_too_slow_to_start_is_one_line(local_ports: dict[str, int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # No lasting server here, so `rollout to` runs its flow on a temporary one, which cannot answer within 1 s.
    # The version must exist: `rollout to` checks it before any server starts.
    from shipyard import registry
    from shipyard.settings import Settings

    mlflow_client = registry.client(Settings())
    mlflow_client.create_registered_model("digits-classifier")
    mlflow_client.create_model_version("digits-classifier", source=(Path.cwd() / "absent").as_uri())
    monkeypatch.setenv("SHIPYARD_PREFECT_START_TIMEOUT_SECONDS", "0.5")
    done = _shipyard("rollout", "to", "1", "--model-name", "digits-classifier", timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = ("shipyard: error: the temporary Prefect server did not answer in time: raise "
             "SHIPYARD_PREFECT_START_TIMEOUT_SECONDS, or start a lasting one with 'shipyard up'")
    assert error in done.stderr.splitlines()


def test_up_makes_the_run_button_work_and_down_stops_everything(local_ports: dict[str, int]) -> None:
    up = _shipyard("up")
    assert up.returncode == 0, up.stderr[-3000:]
    prefect_url = f"http://127.0.0.1:{local_ports['SHIPYARD_PREFECT_PORT']}"
    assert f"Prefect UI:  {prefect_url}" in up.stdout
    assert httpx.get(f"http://127.0.0.1:{local_ports['SHIPYARD_MLFLOW_UI_PORT']}/health").is_success

    # What the Run button does: create a flow run of the deployment; the worker picks it up.
    env = {**os.environ, "PREFECT_API_URL": f"{prefect_url}/api"}
    run = subprocess.run([PREFECT, "deployment", "run", "pipeline-flow/local", "--param",
                          'training={"epochs": 2, "hidden_units": 32}', "--watch", "--watch-timeout", "400"],
                         capture_output=True, text=True, timeout=500, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "Completed" in run.stdout
    # The worker ran the flow in the checkout itself, not in a per-run copy of it (gigabytes with its virtualenv).
    worker = processes.find(load_settings().home, "worker")
    assert worker is not None
    worker_log = Path(worker.log_path).read_text()
    assert "Running 1 deployment pull step(s)" in worker_log and "Downloading flow code" not in worker_log
    endpoint = f"http://127.0.0.1:{local_ports['SHIPYARD_INFERENCE_PORT']}"
    assert httpx.get(f"{endpoint}/version").json()["model_name"] == "digits-classifier"

    # The CLI with the same parameters finds everything the worker's run did: nothing to do, no flow run.
    cli_run = _shipyard("run", "--epochs", "2", "--hidden-units", "32")
    assert cli_run.returncode == 0, cli_run.stderr[-3000:]
    assert cli_run.stdout.startswith("Nothing to do:") and "Prefect run:" not in cli_run.stdout
    # Forced, it trains again, against the local server (not an ephemeral one), and links into its UI.
    forced = _shipyard("run", "--epochs", "2", "--hidden-units", "32", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert f"({prefect_url}/runs/flow-run/" in forced.stdout
    assert "cache bypassed: force=True" in forced.stdout + forced.stderr

    status = _shipyard("status")
    pids = {name: int(pid) for name, pid in re.findall(r"^([a-z-]+):\s+running \(pid (\d+)\)", status.stdout, re.M)}
    assert pids.keys() == set(SERVICES), status.stdout
    down = _shipyard("down")
    assert down.returncode == 0
    assert sorted(down.stdout.removeprefix("Stopped: ").strip().split(", ")) == sorted(SERVICES)
    assert not [name for name, pid in pids.items() if processes.alive(pid)]  # every process is gone, not only named
    after = _shipyard("status").stdout
    assert all(re.search(rf"^{name}:\s+stopped$", after, re.M) for name in SERVICES), after
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{local_ports['SHIPYARD_MLFLOW_UI_PORT']}/health", timeout=2)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{prefect_url}/api/health", timeout=2)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{endpoint}/ping", timeout=2)
