"""Guarantee 2: the whole pipeline SIGKILLed at five random points, rerun each time, ends as if never killed.

A real ``shipyard run`` (the digits demo, small) in a fresh home: store and MLflow (SQLite) under that home,
the session's Prefect server as the orchestrator. Five kill points are drawn from a seeded generator: one in
each stage (staging, training, registration, roll-out) and a fifth in a stage drawn at random, each a random
delay after the stage's first log line (at the latest as the stage finishes). A kill is SIGKILL to the CLI's
whole process group (training runs in it) and to the inference server the run started (a detached service),
so nothing gets to clean up. The Prefect server is not killed: it stands for the remote orchestrator.

After the sixth, uninterrupted run: exit 0, staging and training done once and skipped afterwards, one
dataset version, one model version, the champion and the live server on it, and the weights equal to an
uninterrupted training on the same data with the same seed.
"""

from __future__ import annotations

import io
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from shipyard import datasets, processes
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.rollout.local import NAME as INFERENCE
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem
from shipyard.training import cached_result, train
from tests.servers import free_port

SHIPYARD = str(Path(sys.executable).with_name("shipyard"))
MODEL = "digits-classifier"
# Small, with a checkpoint every 10 steps so that a kill in training leaves something to resume from.
TRAINING = {"epochs": 12, "hidden_units": 16, "checkpoint_every_steps": 10, "seed": 7}
SEED = 13
RUN_TIMEOUT = 400.0

# Each stage: the log line that opens it, the line that closes it, and how long after the opening line a kill
# may come (drawn uniformly; a stage that closes sooner is killed as it closes).
STAGES = {
    "staging": (("Beginning flow run 'pipeline",), ("stage_dataset-", "Finished in state"), 4.0),
    "training": (("fit_model-", "epoch "), ("fit_model-", "Finished in state"), 1.5),  # after a checkpoint
    "registration": (("hold_champion-", "Finished in state"), ("register_model-", "Finished in state"), 8.0),
    "rollout": (("register_model-", "Finished in state"), ("roll_out-", "Finished in state"), 15.0),
}


@dataclass
class Run:
    """One ``shipyard run``: its output lines (as they come) and its process."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def next_line(self, until: float) -> str | None:
        """Return the next output line, or None at ``until`` or at the end of the output."""
        try:
            line = self.lines.get(timeout=max(0.0, until - time.monotonic()))
        except queue.Empty:
            return None
        if line is not None:
            self.seen.append(line)
        return line

    def wait_for(self, parts: tuple[str, ...], until: float) -> bool:
        """Read lines until one holds all of ``parts``; False at ``until`` or at the end of the output."""
        while time.monotonic() < until:
            line = self.next_line(until)
            if line is None and (self.proc.poll() is not None or time.monotonic() >= until):
                return False
            if line is not None and all(p in line for p in parts):
                return True
        return False


@pytest.fixture
def home(tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh home, the session's Prefect server, a free inference port; the inference server stopped after."""
    monkeypatch.setenv("SHIPYARD_PREFECT_API_URL", prefect_api)
    monkeypatch.setenv("SHIPYARD_INFERENCE_PORT", str(free_port()))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    path = Path(os.environ["SHIPYARD_HOME"])
    yield path
    for run in STARTED:  # a failed drill leaves no run behind (one may be waiting on something for minutes)
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
    STARTED.clear()
    processes.stop(path, INFERENCE)


STARTED: list[Run] = []


def _start(params: Path) -> Run:
    proc = subprocess.Popen([SHIPYARD, "run", "--params", str(params), "--model-name", MODEL],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run = Run(proc)
    STARTED.append(run)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.put(line.rstrip("\n"))
        run.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return run


def _kill_everything(run: Run, home: Path) -> None:
    """SIGKILL the CLI's process group and the inference server it started, if any."""
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait()
    service = processes.find(home, INFERENCE)
    if service is not None:
        os.killpg(service.pid, signal.SIGKILL)
        while processes.alive(service.pid):
            time.sleep(0.05)
    while run.next_line(time.monotonic() + 5) is not None:  # the pipe's last lines, for the record
        pass


def _kill_during(run: Run, home: Path, stage: str, delay: float) -> str:
    """Kill ``run`` ``delay`` seconds after ``stage`` opens, or as it closes; return where it was killed."""
    opening, closing, _ = STAGES[stage]
    assert run.wait_for(opening, time.monotonic() + RUN_TIMEOUT), f"{stage} never started:\n" + "\n".join(run.seen)
    deadline = time.monotonic() + delay
    closed = run.wait_for(closing, deadline)
    _kill_everything(run, home)
    return f"{stage} {'as it finished' if closed else f'{delay:.1f} s in'}"


def _plan(rng: random.Random) -> list[tuple[str, float]]:
    """Five kill points: one per stage plus one in a random stage, in pipeline order, each a random delay in."""
    order = list(STAGES)
    stages = sorted([*order, rng.choice(order)], key=order.index)
    return [(stage, round(rng.uniform(0.0, STAGES[stage][2]), 2)) for stage in stages]


def _weights(data: bytes) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state


def _model_versions(home: Path) -> list[str]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


def _champion(home: Path) -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return str(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(MODEL, "champion").version)


def _reference_weights(store: Store, dataset: DatasetRef, params: TrainParams, tmp_path: Path) -> bytes:
    """Train the same params on the same staged version, uninterrupted, in a store of its own."""
    data_dir = datasets.pull(store, dataset.name, dataset.version, tmp_path / "reference-cache")
    fresh = filesystem(Settings(store_uri=str(tmp_path / "reference-store")))
    result = train(fresh, dataset, params, data_dir)
    assert result.resumed_from_step is None
    return fresh.read_bytes(*result.model_parts())


@pytest.mark.drill
def test_killed_at_five_random_points_and_rerun_the_pipeline_ends_as_if_never_killed(
        home: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"training": TRAINING}))
    kills = []
    for stage, delay in _plan(random.Random(SEED)):
        kills.append(_kill_during(_start(params), home, stage, delay))
    print("\nkilled during: " + "; ".join(kills))

    final = _start(params)
    final.proc.wait(timeout=RUN_TIMEOUT)
    while final.next_line(time.monotonic() + 5) is not None:
        pass
    output = "\n".join(final.seen)
    assert final.proc.returncode == 0, output[-4000:]

    # What finished before was skipped: the last run staged, trained and registered nothing (when the last kill
    # came after the rollout, it finds everything done and starts no flow at all).
    if "Nothing to do: this data is staged" not in output:
        assert "cache hit: dataset digits version" in output and "cache hit: same data, params and code" in output
        assert "is already digits-classifier version 1; not registering again" in output

    store = filesystem(Settings(store_uri=str(home / "store")))
    versions = [n.removesuffix(".json") for n in store.list("datasets", "digits", "versions")]
    assert len(versions) == 1, versions
    trainings = [n for n in store.list("training") if n != "inputs"]
    assert len(trainings) == 1, trainings
    result = cached_result(store, trainings[0])
    assert result is not None
    ended = [n for prefix in (("registry", MODEL, "claims", trainings[0]), ("registry", MODEL, "versions"),
                              ("registry", MODEL, "aliases"))
             for n in store.list(*prefix) if n.endswith(".done")
             and json.loads(store.read_bytes(*prefix, n))["why"] == "holder died"]
    print(f"dataset versions: {versions}, trainings: {trainings}, resumed from step {result.resumed_from_step}, "
          f"registry leases of killed holders ended: {len(ended)}")
    if any(k.startswith("training") and not k.endswith("as it finished") for k in kills):
        assert result.resumed_from_step is not None  # the kill in training left a checkpoint, and the rerun used it

    assert _model_versions(home) == ["1"]
    assert _champion(home) == "1"
    service = processes.find(home, INFERENCE)
    assert service is not None and service.url is not None
    assert httpx.get(f"{service.url}/version", timeout=30).json()["model_version"] == "1"

    ours = _weights(store.read_bytes(*result.model_parts()))
    assert result.params.model_dump(include=set(TRAINING)) == TRAINING
    theirs = _weights(_reference_weights(store, result.dataset, result.params, tmp_path))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "the weights differ from an uninterrupted run's"
