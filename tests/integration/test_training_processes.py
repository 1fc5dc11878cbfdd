"""Real processes: SIGTERM checkpoints before exit, SIGKILL then a rerun resumes, two-process DDP on gloo."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shipyard.datasets.demo import write_demo_source
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem
from shipyard.training import TrainResult, cached_result, train, training_key
from shipyard.training.launch import run_workers
from shipyard.training.trainer import checkpoint_prefix

REF = DatasetRef(name="digits", version="0123456789abcdef")

REPO = Path(__file__).resolve().parents[2]
SLOW = TrainParams(entrypoint="tests.training_recipes:slow", epochs=6, hidden_units=32)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_source(tmp_path_factory.mktemp("source") / "digits")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("SHIPYARD_STORE_URI", str(tmp_path / "store"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the test recipes live in tests/
    return filesystem(Settings(store_uri=str(tmp_path / "store")))


def _start(tmp_path: Path, params: TrainParams, digits: Path) -> subprocess.Popen[str]:
    params_file = tmp_path / "params.json"
    params_file.write_text(params.model_dump_json())
    return subprocess.Popen([sys.executable, "-m", "shipyard.training", "--dataset", "digits", "--version", REF.version,
                             "--params", str(params_file), "--data-dir", str(digits)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _sidecars(store: Store, params: TrainParams) -> list[dict[str, object]]:
    prefix = checkpoint_prefix(training_key(REF, params))
    return [json.loads(store.read_bytes(*prefix, n)) for n in store.list(*prefix) if n.endswith(".json")]


def _wait_for_epoch(proc: subprocess.Popen[str], epoch: int) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:  # the process prints one line per epoch, after its checkpoint
        if line.startswith(f"epoch {epoch} "):
            return
    pytest.fail(f"training exited with {proc.wait()} before epoch {epoch}")


def _weights(store: Store, result: TrainResult) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(store.read_bytes(*result.model_parts())), weights_only=True)  # type: ignore[no-any-return]


def _uninterrupted(tmp_path: Path, params: TrainParams, digits: Path) -> dict[str, torch.Tensor]:
    clean = filesystem(Settings(store_uri=str(tmp_path / "clean")))
    return _weights(clean, train(clean, REF, params, digits))


def _rerun(tmp_path: Path, store: Store, params: TrainParams, digits: Path) -> TrainResult:
    proc = _start(tmp_path, params, digits)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    result = cached_result(store, training_key(REF, params))
    assert result is not None
    return result


def test_sigterm_writes_a_checkpoint_exits_143_and_a_rerun_resumes_to_the_same_weights(
        tmp_path: Path, store: Store, digits: Path) -> None:
    proc = _start(tmp_path, SLOW, digits)
    _wait_for_epoch(proc, 1)
    time.sleep(0.05)  # into the second epoch
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # the shell shows 143: the pod ends as terminated, not succeeded
    preempted = [s for s in _sidecars(store, SLOW) if s["reason"] == "preempted"]
    assert len(preempted) == 1 and preempted[0]["epoch"] >= 1 and 0 < int(preempted[0]["step"]) % 23

    result = _rerun(tmp_path, store, SLOW, digits)
    assert result.resumed_from_step == preempted[0]["step"]
    assert [h.epoch for h in result.history] == [1, 2, 3, 4, 5, 6]
    expected = _uninterrupted(tmp_path, SLOW, digits)
    assert all(torch.equal(v, expected[k]) for k, v in _weights(store, result).items())


def test_sigkill_mid_training_then_a_rerun_resumes_from_the_newest_checkpoint(
        tmp_path: Path, store: Store, digits: Path) -> None:
    params = SLOW.model_copy(update={"checkpoint_every_steps": 5})
    proc = _start(tmp_path, params, digits)
    _wait_for_epoch(proc, 2)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to checkpoint: the node vanished
    proc.wait(timeout=30)
    newest = max(int(s["step"]) for s in _sidecars(store, params))
    assert newest >= 2 * 23

    result = _rerun(tmp_path, store, params, digits)
    assert result.resumed_from_step == newest
    assert [h.epoch for h in result.history] == [1, 2, 3, 4, 5, 6]
    assert [h.step for h in result.history] == [23 * e for e in range(1, 7)]
    expected = _uninterrupted(tmp_path, params, digits)
    assert all(torch.equal(v, expected[k]) for k, v in _weights(store, result).items())


def test_two_workers_train_with_ddp_on_cpu(tmp_path: Path, store: Store, digits: Path) -> None:
    params = TrainParams(epochs=3, hidden_units=32)
    lines: list[str] = []
    run_workers(2, REF.name, REF.version, params, digits, on_line=lines.append)
    result = cached_result(store, training_key(REF, params))
    assert result is not None and result.world_size == 2
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert result.history[-1].samples == 1438  # each global batch split over the two workers
    assert any(line.startswith("epoch 3 ") for line in lines)
    # Same global batches, gradients averaged over the workers: the same training as one process.
    alone = _uninterrupted(tmp_path, params, digits)
    for name, value in _weights(store, result).items():
        torch.testing.assert_close(value, alone[name], rtol=0, atol=1e-5)
