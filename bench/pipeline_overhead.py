"""Pipeline overhead: the demo pipeline under Prefect vs a plain script doing the same four steps.

Both contenders start from an empty state (fresh store, fresh SQLite MLflow, no server running) and do
the full work: stage the demo digits, train, log and register the model, serve it and smoke-test one
prediction. They alternate, in one run, so machine noise hits both alike. The Prefect server is started
once before timing and is not counted.

    .venv/bin/python -m bench.pipeline_overhead [--rounds 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from shipyard.params import DatasetParams, DatasetRef, RegisterParams, RolloutParams, TrainParams

TARGET = 1.3


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


def prefect_pipeline(home: Path, training: TrainParams) -> str:
    """The demo pipeline flow (stage -> train -> register -> roll out) under Prefect."""
    from flows.pipeline import pipeline_flow
    from shipyard.rollout.local import stop
    from shipyard.settings import load_settings

    result = pipeline_flow(DatasetParams(), training, RegisterParams(), RolloutParams())
    stop(load_settings())
    return result.served_version


def _timed(fn, home: Path, training: TrainParams) -> float:  # type: ignore[no-untyped-def]
    os.environ["SHIPYARD_HOME"] = str(home)  # the flow's tasks read settings from the environment
    started = time.perf_counter()
    assert fn(home, training) == "1"
    return time.perf_counter() - started


def main() -> None:
    """Run both contenders alternately and print the ratio of medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    training = TrainParams(epochs=args.epochs)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from the server
    from prefect.testing.utilities import prefect_test_harness

    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    os.chdir(work)
    times: dict[str, list[float]] = {"plain": [], "prefect": []}
    with prefect_test_harness(server_startup_timeout=120):  # started once, not timed
        prefect_pipeline(work / "warmup", TrainParams(epochs=1))  # imports and first-use costs, not timed
        for round_ in range(args.rounds):
            # A fresh home each time: MLflow caches its SQLite engine per URI, so reusing a deleted path fails.
            times["plain"].append(_timed(plain_script, work / f"plain-{round_}", training))
            times["prefect"].append(_timed(prefect_pipeline, work / f"prefect-{round_}", training))
    plain, prefect = statistics.median(times["plain"]), statistics.median(times["prefect"])
    print(f"plain script    median {plain:6.2f} s  runs {', '.join(f'{t:.2f}' for t in times['plain'])}")
    print(f"Prefect flow    median {prefect:6.2f} s  runs {', '.join(f'{t:.2f}' for t in times['prefect'])}")
    verdict = "meets" if prefect / plain <= TARGET else "MISSES"
    print(f"ratio Prefect/plain = {prefect / plain:.2f}x ({verdict} the {TARGET}x target)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
