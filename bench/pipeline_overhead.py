"""Pipeline overhead, timed as whole processes the way a user meets them.

Three contenders, each a separate process started from an empty state (fresh home: local store, SQLite MLflow,
no server running), doing the full work: stage the demo digits, train, log and register the model, serve it and
smoke-test one prediction.

- plain:  a Python script doing the four steps with the core library, no Prefect anywhere;
- first:  ``shipyard run`` on that fresh home (it starts the local Prefect and inference servers and keeps them);
- cached: ``shipyard run`` again right after, everything done: it answers without a flow (the target is at most 5 s).

Rounds alternate the contenders so machine noise hits them alike; the script prints medians and ratios.

    .venv/bin/python -m bench.pipeline_overhead [--rounds 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shipyard.params import DatasetRef, RegisterParams, TrainParams

FIRST_TARGET = 1.2  # fresh `shipyard run` / plain script
CACHED_TARGET = 5.0  # seconds for a fully cached rerun
SHIPYARD = str(Path(sys.executable).with_name("shipyard"))
REPO = Path(__file__).resolve().parent.parent  # the plain contender runs `-m bench.pipeline_overhead` from elsewhere


def plain_script(home: Path, training: TrainParams) -> str:
    """The four steps as a plain Python script: no Prefect anywhere."""
    from shipyard import datasets, registry
    from shipyard.datasets.demo import write_demo_source
    from shipyard.rollout.base import ModelRef
    from shipyard.rollout.local import LocalTarget
    from shipyard.settings import Settings
    from shipyard.storage import filesystem
    from shipyard.training import train

    settings = Settings(home=home)
    store = filesystem(settings)
    source = write_demo_source(home / "demo" / "digits")
    manifest = datasets.stage(store, "digits", str(source)).manifest
    data_dir = datasets.pull(store, "digits", manifest.version, home / "cache" / "datasets")
    result = train(store, DatasetRef(name="digits", version=manifest.version), training, data_dir)
    client = registry.client(settings)
    params = RegisterParams()
    registered = registry.register(client, settings, store, result, params.model_name, params.metric,
                                   registry.RunContext())
    judged = registry.judge(client, settings, store, registered, result, params, registry.RunContext())
    target = LocalTarget(settings)
    rollout = target.roll_out(ModelRef(model_name=params.model_name, version=judged.version), judged.input_example)
    target.stop()
    return rollout.model.version



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    ports = {name: str(_free_port()) for name in
             ("SHIPYARD_INFERENCE_PORT", "SHIPYARD_PREFECT_PORT", "SHIPYARD_MLFLOW_UI_PORT")}
    return {**os.environ, "SHIPYARD_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "true", "PYTHONPATH": str(REPO), **ports}


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return elapsed


def _round(work: Path, index: int, epochs: int) -> dict[str, float]:
    plain_env = _env(work / f"plain-{index}")
    shipyard_env = _env(work / f"shipyard-{index}")
    run = [SHIPYARD, "run", "--epochs", str(epochs)]
    try:
        times = {"plain": _timed([sys.executable, "-m", "bench.pipeline_overhead", "--plain",
                                  plain_env["SHIPYARD_HOME"], "--epochs", str(epochs)], plain_env),
                 "first": _timed(run, shipyard_env),
                 "cached": _timed(run, shipyard_env)}
    finally:  # stop what each contender left running (not timed)
        for env in (plain_env, shipyard_env):
            subprocess.run([SHIPYARD, "down"], env=env, capture_output=True, timeout=300, check=False)
    return times


def main() -> None:
    """Run the contenders alternately and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # one plain-script process (internal)
    args = parser.parse_args()
    if args.plain is not None:
        assert plain_script(args.plain, TrainParams(epochs=args.epochs)) == "1"
        return
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    os.chdir(work)
    times: dict[str, list[float]] = {"plain": [], "first": [], "cached": []}
    for index in range(args.rounds):
        for name, value in _round(work, index, args.epochs).items():
            times[name].append(value)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, label in (("plain", "plain script"), ("first", "shipyard run, fresh"),
                        ("cached", "shipyard run, cached")):
        print(f"{label:22} median {medians[name]:6.2f} s  runs {', '.join(f'{t:.2f}' for t in times[name])}")
    first = medians["first"] / medians["plain"]
    print(f"fresh run / plain script = {first:.2f}x ({'meets' if first <= FIRST_TARGET else 'MISSES'} "
          f"the {FIRST_TARGET}x target)")
    print(f"cached rerun = {medians['cached']:.2f} s, {medians['cached'] / medians['first']:.2f}x the fresh run "
          f"({'meets' if medians['cached'] <= CACHED_TARGET else 'MISSES'} the {CACHED_TARGET:.0f} s target)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
