"""The local rollout target and the inference server, over real HTTP, against a real MLflow server.

A load generator (bounded threads of HTTP clients on 127.0.0.1) runs through every rollout: a good
version must go live without one failed request, and a broken one must change nothing users see.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient

from flows.rollout import rollout_flow
from shipyard import processes
from shipyard.errors import ServingError
from shipyard.registry.aliases import history
from shipyard.rollout.base import ModelRef
from shipyard.rollout.local import LocalTarget, serving_token
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from tests import servers
from tests.serving_models import EXAMPLE, register_broken, register_torch

ROW = EXAMPLE[:1].tolist()
# Servers unpickle the broken models by reference to tests.serving_models (tests run in a temporary cwd).
REPO = str(Path(__file__).resolve().parents[2])


@dataclass
class Load:
    """Threads posting one row in a loop; every answer's status and serving version, in order per thread."""

    url: str
    threads: int = 4
    answers: list[list[tuple[int, str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self.answers = [[] for _ in range(self.threads)]
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    resp = client.post(f"{self.url}/invocations", json={"inputs": ROW})
                    self.answers[index].append((resp.status_code, resp.headers.get("x-model-version", "")))
                except httpx.HTTPError as exc:
                    self.answers[index].append((0, type(exc).__name__))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    def wait_for(self, count: int) -> None:
        """Block until ``count`` more answers arrived."""
        target = sum(map(len, self.answers)) + count
        while sum(map(len, self.answers)) < target:
            self._stop.wait(0.05)

    @property
    def failed(self) -> list[tuple[int, str]]:
        return [a for thread in self.answers for a in thread if a[0] != 200]

    @property
    def versions(self) -> list[str]:
        """Versions in the order one thread saw them, without repeats."""
        seen: list[str] = []
        for _, version in self.answers[0]:
            if not seen or seen[-1] != version:
                seen.append(version)
        return seen


@pytest.fixture
def target(mlflow_uri: str, inference_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalTarget:
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHIPYARD_SERVING_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("PYTHONPATH", REPO)
    return LocalTarget(load_settings())


def _champion(mlflow_uri: str, model_name: str) -> str:
    return str(MlflowClient(mlflow_uri, registry_uri=mlflow_uri).get_model_version_by_alias(model_name, "champion")
               .version)


def test_a_new_version_goes_live_under_load_without_one_failed_request(
        target: LocalTarget, mlflow_uri: str, model_name: str) -> None:
    v1, v2 = register_torch(mlflow_uri, model_name, seed=1), register_torch(mlflow_uri, model_name, seed=2)
    early = target.start()  # as `shipyard run` does while Prefect boots: the server starts, nobody waits
    assert early is not None and target.start() is None  # one server, however often it is started ahead
    first = target.roll_out(ModelRef(model_name=model_name, version=v1), EXAMPLE.tolist())
    assert first.previous is None and not first.reused
    served_by = processes.find(target.settings.home, "inference")
    assert served_by is not None and served_by.pid == early.pid  # the rollout waited for it and used it

    with Load(target.url) as load:
        load.wait_for(50)
        result = target.roll_out(ModelRef(model_name=model_name, version=v2), EXAMPLE.tolist())
        load.wait_for(50)
    assert load.failed == []
    assert load.versions == [v1, v2]  # every thread switched once, and never back
    assert all(thread[-1][1] == v2 for thread in load.answers)
    assert result.previous == ModelRef(model_name=model_name, version=v1)
    version = httpx.get(f"{target.url}/version").json()
    assert (version["model_version"], version["previous_model_version"]) == (v2, v1)
    assert version["dataset_version"] == "ds-2" and re.fullmatch(r"[0-9a-f]{32}", version["run_id"])
    # The switched-to version answers exactly what MLflow's own loader predicts.
    import mlflow

    expected = mlflow.pyfunc.load_model(f"models:/{model_name}/{v2}").predict(EXAMPLE)
    answer = httpx.post(f"{target.url}/invocations", json={"inputs": EXAMPLE.tolist()}).json()["predictions"]
    np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
    assert target.roll_out(ModelRef(model_name=model_name, version=v2), EXAMPLE.tolist()).reused
    assert target.stop_if_idle() is None and processes.alive(early.pid)  # it serves: left alone


def test_a_server_started_ahead_of_a_rollout_that_never_came_loads_the_runtime_and_is_stopped_idle(
        target: LocalTarget) -> None:
    early = target.start()
    assert early is not None
    processes.wait_ready(early, f"{target.url}/livez", 120)
    log = Path(early.log_path)
    deadline = time.monotonic() + 120
    while "model runtime loaded (mlflow.pyfunc, mlflow.pytorch" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    assert httpx.get(f"{target.url}/version").status_code == 503  # nothing serves yet
    stopped = target.stop_if_idle()
    assert stopped is not None and stopped.pid == early.pid
    assert not processes.alive(early.pid) and processes.find(target.settings.home, "inference") is None


@pytest.mark.parametrize(("kind", "reason"), [
    ("fails-to-load", "failed to load: RuntimeError: weights file is truncated"),
    ("raises-on-predict", "warm-up prediction answered HTTP 4"),
    ("wrong-shape", r"answers with shape \[2, 3\] where the live version answers \[2, 10\]"),
    ("slow", "prediction took longer than 3s"),
])
def test_a_broken_version_is_rolled_back_with_the_champion_and_no_failed_request(
        target: LocalTarget, mlflow_uri: str, model_name: str, prefect_api: str, kind: str, reason: str) -> None:
    good = register_torch(mlflow_uri, model_name, seed=1)
    rollout_flow(model_name, good)
    assert _champion(mlflow_uri, model_name) == good
    broken = register_broken(mlflow_uri, model_name, kind)

    with Load(target.url) as load:
        load.wait_for(20)
        state = rollout_flow(model_name, broken, return_state=True)
        load.wait_for(20)
    assert state.is_failed()
    with pytest.raises(ServingError, match=f"version {broken} was not rolled out: .*{reason}.*; still serving "
                       f"version {good}"):
        state.result()
    assert load.failed == [] and load.versions == [good]
    assert httpx.get(f"{target.url}/version").json()["model_version"] == good
    assert _champion(mlflow_uri, model_name) == good  # the alias went back with the live version
    # Each move of the alias is in the model's history (`shipyard models history`), the rollback's too.
    moves = [(m.replaced, m.version, m.actor) for m in history(filesystem(load_settings()), model_name)]
    assert moves == [(None, good, "rollout"), (good, broken, "rollout"), (broken, good, "rollback")]


def test_http_contract_sizes_timeouts_bad_input_metrics_and_token(
        target: LocalTarget, mlflow_uri: str, model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_SERVING_MAX_REQUEST_BYTES", "16384")
    target = LocalTarget(load_settings())
    version = register_broken(mlflow_uri, model_name, "slow-on-big-inputs")
    target.roll_out(ModelRef(model_name=model_name, version=version), EXAMPLE.tolist())
    url = target.url

    ok = httpx.post(f"{url}/invocations", json={"inputs": ROW})
    assert ok.status_code == 200 and ok.json()["predictions"] == [[0.1] * 10]
    assert httpx.post(f"{url}/invocations", json={"inputs": ROW * 40}).status_code == 413  # over 16384 bytes
    slow = httpx.post(f"{url}/invocations", json={"inputs": ROW * 9}, timeout=60)  # 9 rows: sleeps 30 s
    assert slow.status_code == 504 and "longer than 3s" in slow.json()["message"]
    bad = [httpx.post(f"{url}/invocations", content=b'{"inputs": [[1, 2', headers={"content-type": "application/json"}),
           httpx.post(f"{url}/invocations", json={"inputs": [[1.0, 2.0]]}),
           httpx.post(f"{url}/invocations", json={"inputs": [["a"] * 64]}),
           httpx.post(f"{url}/invocations", json={"dataframe_split": {"data": [[1, 2]]}}),
           httpx.post(f"{url}/invocations", content=b"x", headers={"content-type": "text/plain"})]
    assert [r.status_code // 100 for r in bad] == [4] * len(bad), [r.text for r in bad]

    metrics = httpx.get(f"{url}/metrics").text
    labels = f'model_name="{model_name}",model_version="{version}"'
    assert re.search(rf"shipyard_requests_total\{{{labels}\}} 8\.0", metrics), metrics  # 200, 413, 504, 5 bad
    assert re.search(rf'shipyard_request_errors_total\{{code="413",{labels}\}} 1\.0', metrics)
    assert re.search(rf'shipyard_request_errors_total\{{code="504",{labels}\}} 1\.0', metrics)
    assert f"shipyard_request_latency_seconds_bucket{{le=\"+Inf\",{labels}}} 8.0" in metrics

    # Nothing anonymous changes what is served.
    spec = {"model_uri": f"models:/{model_name}/{version}", "model_name": model_name, "model_version": version}
    assert httpx.post(f"{url}/admin/candidate", json=spec).status_code == 401
    assert httpx.post(f"{url}/admin/promote", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert httpx.delete(f"{url}/admin/candidate").status_code == 401
    token_file = target.settings.home / "serving-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert serving_token(target.settings) == token_file.read_text().strip()
    assert serving_token(target.settings) not in Path(target.settings.home / "logs" / "inference.log").read_text()


def _serve(args: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "shipyard.serving", "--port", str(port), *args],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def server_env(mlflow_uri: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": mlflow_uri, "SHIPYARD_SERVING_TOKEN": "t0ken", "PYTHONPATH": REPO}


def test_health_is_ready_only_once_a_live_model_answered_a_prediction(
        mlflow_uri: str, model_name: str, server_env: dict[str, str]) -> None:
    version = register_torch(mlflow_uri, model_name, seed=1)
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve([], port, server_env)
    try:
        servers.wait_http(f"{url}/livez", proc, timeout=120)
        assert httpx.get(f"{url}/health").status_code == 503
        assert httpx.get(f"{url}/ping").status_code == 503
        auth = {"Authorization": "Bearer t0ken"}
        spec = {"model_uri": f"models:/{model_name}/{version}", "model_name": model_name, "model_version": version}
        staged = httpx.post(f"{url}/admin/candidate", json=spec, headers=auth, timeout=300)
        assert staged.status_code == 200 and len(staged.json()["predictions"]) == len(EXAMPLE)
        assert httpx.get(f"{url}/health").status_code == 503  # loaded and warmed, but not serving yet
        other = {"model_uri": f"models:/{model_name}/99"}
        assert httpx.post(f"{url}/admin/promote", json=other, headers=auth).status_code == 409  # not the one staged
        assert httpx.get(f"{url}/health").status_code == 503
        assert httpx.post(f"{url}/admin/promote", json=spec, headers=auth).status_code == 200
        assert httpx.get(f"{url}/health").json() == {"status": "ready", "model_version": version}
    finally:
        servers.stop(proc)


def test_a_pod_whose_model_cannot_predict_never_reports_ready(
        mlflow_uri: str, model_name: str, server_env: dict[str, str], tmp_path: Path) -> None:
    broken = register_broken(mlflow_uri, model_name, "raises-on-predict")
    port = servers.free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shipyard.serving", "--port", str(port), "--model-uri",
                                 f"models:/{model_name}/{broken}"], env={**os.environ, **server_env}, stdout=out,
                                stderr=subprocess.STDOUT)
    readiness = []
    while proc.poll() is None:
        try:
            readiness.append(httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code)
        except httpx.HTTPError:
            pass
        threading.Event().wait(0.2)
    assert proc.returncode != 0 and 200 not in readiness
    assert "cannot serve" in log.read_text() and "ValueError: matmul: shapes do not align" in log.read_text()
