"""Serving: Shipyard's inference server against `mlflow models serve --env-manager local`, side by side.

One registered model (the digits classifier's shape: 64 -> hidden -> 10 with softmax, logged by
``mlflow.pytorch.log_model`` as the pipeline logs it), both servers started on 127.0.0.1 from the same
SQLite registry, each with one process (MLflow's default of one uvicorn worker; Shipyard's single
process with micro-batching). The same load generator drives both: ``wrk`` (Debian's package) when it is
installed, else bounded threads of keep-alive httpx clients. Each request is one row in the MLflow
scoring format, ``{"inputs": [[...64 floats...]]}``. Rounds alternate between the servers so machine
noise hits both alike; the medians are compared.

    .venv/bin/python -m bench.serving [--seconds 10] [--rounds 3] [--hidden 256] [--breakdown]

``--breakdown`` also times, in-process, each step of one request on both paths (JSON parsing, pandas,
the pyfunc wrapper, the forward pass, the thread hop, the answer's JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

BIN = Path(sys.executable).parent
TARGETS = {1: 1.5, 16: 3.0}  # requests/s ratio Shipyard/MLflow at each concurrency
LUA = """
wrk.method = "POST"
wrk.body = [==[BODY]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status + e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Run:
    """One load run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def register_model(tracking_uri: str, hidden: int) -> str:
    """Log the digits-shaped MLP as the pipeline does and register it; return its URI."""
    import mlflow
    import torch
    from torch import nn

    from shipyard.registry import PIP_REQUIREMENTS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10), nn.Softmax(dim=1))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    example = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", input_example=example, pip_requirements=PIP_REQUIREMENTS)
    version = mlflow.register_model(info.model_uri, "bench-serving").version
    return f"models:/bench-serving/{version}"


def start(cmd: list[str], ready: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server and wait until ``ready`` answers 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited; see {log}")
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{ready} not ready within 300 s; see {log}")


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        todo += [int(c) for c in children]
    return total / 1024


def load_wrk(url: str, body: str, concurrency: int, seconds: float, script: Path) -> Run:
    """Drive ``url`` with wrk: ``concurrency`` connections on up to 2 threads."""
    script.write_text(LUA.replace("BODY", body))
    threads = min(2, concurrency)
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s",
                           "-s", str(script), f"{url}/invocations"], capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    requests, duration_us, errors, p50_us, p99_us = map(int, line.split()[1:])
    non_2xx = next((int(line.split()[-1]) for line in done.stdout.splitlines() if "Non-2xx" in line), 0)
    return Run(requests / (duration_us / 1e6), p50_us / 1000, p99_us / 1000, errors + non_2xx)


def load_threads(url: str, body: str, concurrency: int, seconds: float) -> Run:
    """Drive ``url`` with ``concurrency`` threads, each a keep-alive httpx client posting in a loop."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop = time.perf_counter() + seconds

    def worker(index: int) -> None:
        with httpx.Client(timeout=10, headers={"Content-Type": "application/json"}) as client:
            while (started := time.perf_counter()) < stop:
                ok = client.post(f"{url}/invocations", content=body).status_code == 200
                latencies[index].append(time.perf_counter() - started)
                errors[index] += not ok

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = sorted(x for per in latencies for x in per)
    return Run(len(every) / seconds, every[len(every) // 2] * 1000, every[int(len(every) * 0.99)] * 1000, sum(errors))


def breakdown(model_uri: str, body: str) -> None:
    """Time each step of one request on MLflow's path and on Shipyard's, in this process."""
    import asyncio
    import timeit

    import mlflow
    import orjson
    import torch
    from mlflow.pyfunc import scoring_server

    pyfunc = mlflow.pyfunc.load_model(model_uri)
    schema = pyfunc.metadata.get_input_schema()
    module = pyfunc._model_impl.pytorch_model
    raw = body.encode()
    rows = np.asarray(orjson.loads(raw)["inputs"], dtype=np.float32)
    parsed = scoring_server._parse_json_data(raw, pyfunc.metadata, schema).data

    def forward() -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = module(torch.from_numpy(rows)).numpy()
        return out

    out = forward()

    async def hops(n: int) -> None:
        for _ in range(n):
            await asyncio.to_thread(int)

    steps = {
        "MLflow: whole scoring function (parse + pyfunc predict + JSON answer)":
            lambda: scoring_server.invocations(raw, "application/json", pyfunc, schema),
        "MLflow: parse JSON into its input type (json + schema enforcement)":
            lambda: scoring_server._parse_json_data(raw, pyfunc.metadata, schema),
        "MLflow: pyfunc.predict (schema check, wrapper, no_grad forward)": lambda: pyfunc.predict(parsed),
        "Shipyard: orjson.loads + np.asarray(float32)":
            lambda: np.asarray(orjson.loads(raw)["inputs"], dtype=np.float32),
        "Shipyard: forward under inference_mode": forward,
        "Shipyard: orjson.dumps of the answer": lambda: orjson.dumps({"predictions": out},
                                                                     option=orjson.OPT_SERIALIZE_NUMPY),
        "stdlib json.loads (for comparison)": lambda: json.loads(raw),
    }
    print("\nWhere one 1-row request's time goes (in-process, median of 5 x 2000 calls):")
    for name, fn in steps.items():
        per_call = statistics.median(timeit.repeat(fn, number=2000, repeat=5)) / 2000
        print(f"  {per_call * 1e6:9.1f} us  {name}")
    hop = statistics.median(timeit.repeat(lambda: asyncio.run(hops(2000)), number=1, repeat=5)) / 2000
    print(f"  {hop * 1e6:9.1f} us  thread hop (asyncio.to_thread round trip), paid once per batch by Shipyard")


def main() -> None:
    """Start both servers, drive each at concurrency 1 and 16 in alternating rounds, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of the MLP")
    parser.add_argument("--breakdown", action="store_true", help="also time each step of one request")
    parser.add_argument("--load", choices=["wrk", "threads"], default="wrk" if shutil.which("wrk") else "threads")
    args = parser.parse_args()

    from tests.servers import free_port

    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-serving-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "SHIPYARD_HOME": str(work)}
    model_uri = register_model(uri, args.hidden)
    body = json.dumps({"inputs": np.random.default_rng(1).random((1, 64)).round(4).tolist()})
    ports = {"shipyard": free_port(), "mlflow": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    procs = {
        "shipyard": start([sys.executable, "-m", "shipyard.serving", "--model-uri", model_uri,
                           "--port", str(ports["shipyard"])], f"{urls['shipyard']}/health", work / "shipyard.log", env),
        "mlflow": start([str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                         "-h", "127.0.0.1", "-p", str(ports["mlflow"])], f"{urls['mlflow']}/ping",
                        work / "mlflow.log", env),
    }
    try:
        print(f"model {model_uri} (64-{args.hidden}-10, pt2), load generator: {args.load}, "
              f"{args.seconds:g} s per run, {args.rounds} alternating rounds")
        for name in procs:  # answers agree before anything is timed
            load_threads(urls[name], body, 1, 1.0)
        answers = {n: httpx.post(f"{u}/invocations", content=body, headers={"Content-Type": "application/json"})
                   .json()["predictions"] for n, u in urls.items()}
        np.testing.assert_allclose(answers["shipyard"], answers["mlflow"], rtol=1e-5, atol=1e-6)
        runs: dict[tuple[str, int], list[Run]] = {}
        for _ in range(args.rounds):
            for concurrency in TARGETS:
                for name, url in urls.items():
                    run = (load_wrk(url, body, concurrency, args.seconds, work / "post.lua") if args.load == "wrk"
                           else load_threads(url, body, concurrency, args.seconds))
                    runs.setdefault((name, concurrency), []).append(run)
        report(runs, {name: rss_mb(proc.pid) for name, proc in procs.items()})
        if args.breakdown:
            breakdown(model_uri, body)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, 15)
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def report(runs: dict[tuple[str, int], list[Run]], rss: dict[str, float]) -> None:
    """Print the medians per server and concurrency, and the ratios against the targets."""
    med: dict[tuple[str, int], Run] = {}
    for key, per in runs.items():
        med[key] = Run(statistics.median(r.rps for r in per), statistics.median(r.p50_ms for r in per),
                       statistics.median(r.p99_ms for r in per), sum(r.errors for r in per))
    print(f"{'server':10} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  runs (req/s)")
    for (name, concurrency), run in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        each = ", ".join(f"{r.rps:.0f}" for r in runs[(name, concurrency)])
        print(f"{name:10} {concurrency:4d} {run.rps:9.0f} {run.p50_ms:8.2f} {run.p99_ms:8.2f} {run.errors:6d}  {each}")
    print(f"RSS after the runs: shipyard {rss['shipyard']:.0f} MB, mlflow models serve {rss['mlflow']:.0f} MB")
    for concurrency, target in TARGETS.items():
        ours, theirs = med[("shipyard", concurrency)], med[("mlflow", concurrency)]
        ratio, p99 = ours.rps / theirs.rps, ours.p99_ms / theirs.p99_ms
        verdict = "meets" if ratio >= target and (concurrency == 1 or p99 <= 0.5) else "MISSES"
        p99_target = "" if concurrency == 1 else " and <= 0.5x p99"
        print(f"c={concurrency:<2}  req/s {ratio:.2f}x, p99 {p99:.2f}x "
              f"({verdict} the {target}x req/s{p99_target} target)")


if __name__ == "__main__":
    main()
