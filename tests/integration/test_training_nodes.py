"""Multi-node training as real processes: each "pod" is a process started with exactly what its pod would get.

The command and environment come from the Indexed Job manifest the launcher creates; only the rendezvous
endpoint (index 0's DNS name on a cluster) becomes 127.0.0.1 and a free port, the params file (mounted from
the pod annotation) a local copy of the annotation, and each pod gets its own SHIPYARD_HOME (its own disk).
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from shipyard import datasets
from shipyard.datasets.demo import write_demo_source
from shipyard.kube import indexed
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem
from shipyard.training import TrainResult, cached_result, train, training_key
from shipyard.training.launch import run_workers
from shipyard.training.trainer import checkpoint_prefix
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
# Slow enough per step that a worker can be killed mid-epoch; 23 steps per epoch on the digits.
PARAMS = TrainParams(entrypoint="tests.training_recipes:slow", epochs=3, hidden_units=16, checkpoint_every_steps=5,
                     nodes=2)


@dataclass(frozen=True)
class Staged:
    store: Store
    uri: str
    version: str
    data_dir: Path


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    root = tmp_path_factory.mktemp("nodes")
    uri = str(root / "store")
    store = filesystem(Settings(store_uri=uri))
    version = datasets.stage(store, "digits", str(write_demo_source(root / "source"))).version
    yield Staged(store, uri, version, datasets.pull(store, "digits", version, root / "cache"))


@pytest.fixture(autouse=True)
def _env(staged: Staged, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_STORE_URI", staged.uri)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the test recipes live in tests/


def _plan(staged: Staged, params: TrainParams, name: str) -> indexed.JobPlan:
    return indexed.JobPlan(name=name, namespace="shipyard", image="shipyard:test", run_id="run-1", dataset="digits",
                           version=staged.version, params_json=indexed.params_json(params), nodes=params.nodes,
                           procs_per_node=params.procs_per_node, env={"SHIPYARD_STORE_URI": staged.uri})


def _kubelet_expand(part: str, env: dict[str, str]) -> str:
    """Expand $(VAR) in a command part from the container's environment, as the kubelet does."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), part)


def _start_pods(plan: indexed.JobPlan, tmp: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """Start one process per pod of the Job, with the pod's command and env, as the kubelet would."""
    job = indexed.job_manifest(plan)
    pod = job["spec"]["template"]
    container = pod["spec"]["containers"][0]
    params_file = tmp / f"{plan.name}-params.json"
    params_file.write_text(pod["metadata"]["annotations"][indexed.PARAMS_ANNOTATION])
    command = list(container["command"])
    command[0] = sys.executable
    command[command.index("--rdzv-endpoint") + 1] = f"127.0.0.1:{free_port()}"
    command[command.index("--params") + 1] = str(params_file)
    started = []
    for index in range(job["spec"]["completions"]):
        env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]},
               "JOB_COMPLETION_INDEX": str(index), "SHIPYARD_HOME": str(tmp / f"{plan.name}-pod{index}")}
        expanded = [_kubelet_expand(part, env) for part in command]
        log = tmp / f"{plan.name}-pod{index}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(expanded, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started.append((proc, log))
    return started


def _wait_all(pods: list[tuple[subprocess.Popen[bytes], Path]], timeout: float = 240) -> list[int]:
    try:
        return [proc.wait(timeout=timeout) for proc, _ in pods]
    finally:
        for proc, _ in pods:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _logs(pods: list[tuple[subprocess.Popen[bytes], Path]]) -> str:
    return "\n".join(log.read_text(errors="replace")[-3000:] for _, log in pods)


def _weights(store: Store, result: TrainResult) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(store.read_bytes(*result.model_parts())), weights_only=True)  # type: ignore[no-any-return]


def _result(store: Store, params: TrainParams, version: str) -> TrainResult:
    result = cached_result(store, training_key(DatasetRef(name="digits", version=version), params))
    assert result is not None
    return result


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=0, atol=1e-5)


def _worker_pid(rdzv_id: str, rank: int) -> int | None:
    """Return the pid of the torchrun worker with this global rank in this rendezvous (Linux /proc)."""
    want = {f"TORCHELASTIC_RUN_ID={rdzv_id}".encode(), f"RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= environ:
            return int(entry.name)
    return None


def test_two_nodes_of_one_process_train_the_same_weights_as_one_node_of_two(staged: Staged, tmp_path: Path) -> None:
    pods = _start_pods(_plan(staged, PARAMS, "train-same-1"), tmp_path)
    assert _wait_all(pods) == [0, 0], _logs(pods)
    two_nodes = _result(staged.store, PARAMS, staged.version)
    assert (two_nodes.world_size, two_nodes.nodes, len(two_nodes.rank_samples_per_second)) == (2, 2, 2)
    assert all(rate > 0 for rate in two_nodes.rank_samples_per_second)
    assert [h.epoch for h in two_nodes.history] == [1, 2, 3]

    one_node = PARAMS.model_copy(update={"nodes": 1})
    run_workers(2, "digits", staged.version, one_node, staged.data_dir, on_line=lambda _: None)
    result = _result(staged.store, one_node, staged.version)
    assert (result.world_size, result.nodes) == (2, 1)
    _assert_same(_weights(staged.store, two_nodes), _weights(staged.store, result))


def test_a_killed_rank_fails_the_attempt_and_the_next_attempt_resumes_to_the_same_weights(
        staged: Staged, tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"seed": 7})
    key = training_key(DatasetRef(name="digits", version=staged.version), params)
    first = _start_pods(_plan(staged, params, "train-kill-1"), tmp_path)
    prefix = checkpoint_prefix(key)
    deadline = time.monotonic() + 180
    # Mid-epoch 2: past the end-of-epoch-1 checkpoint and the scheduled one after it.
    while not any(n.endswith(".json") and int(n[5:15]) > 28 for n in staged.store.list(*prefix)):
        assert time.monotonic() < deadline and all(p.poll() is None for p, _ in first), _logs(first)
        time.sleep(0.05)
    pid = _worker_pid("train-kill-1", 1)
    assert pid is not None, _logs(first)
    os.kill(pid, signal.SIGKILL)  # the OOM killer, or the node gone
    codes = _wait_all(first, timeout=120)
    assert all(code != 0 for code in codes), _logs(first)  # the whole attempt failed, not only rank 1's node
    assert cached_result(staged.store, key) is None
    newest = max(int(n[5:15]) for n in staged.store.list(*prefix) if n.endswith(".json"))

    second = _start_pods(_plan(staged, params, "train-kill-2"), tmp_path)
    assert _wait_all(second) == [0, 0], _logs(second)
    result = _result(staged.store, params, staged.version)
    assert result.resumed_from_step == newest and 28 < newest < 3 * 23
    assert [h.step for h in result.history] == [23, 46, 69]
    clean = filesystem(Settings(store_uri=str(tmp_path / "clean")))
    # uninterrupted, one process
    alone = train(clean, DatasetRef(name="digits", version=staged.version), params, staged.data_dir)
    _assert_same(_weights(staged.store, result), _weights(clean, alone))
