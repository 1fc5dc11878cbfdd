"""Four `shipyard run` at once on a fresh home: identical work done and registered once, nothing lost or corrupt.

What a new user does: start several pipelines together on one machine, the first ones ever (no Prefect server,
no MLflow database, no store yet). Two ask for the same training, two for different ones. They share the
default store (``<home>/store``) and the default registry (SQLite ``<home>/mlflow.db``).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from shipyard.datasets.manifest import VersionHasher, object_key
from shipyard.datasets.versions import iter_files, list_versions
from shipyard.registry import CHAMPION, TAG_TRAIN_KEY
from shipyard.registry.gate import HOLDOUT_METRIC_PREFIX
from shipyard.settings import load_settings
from shipyard.storage import Store, filesystem
from shipyard.training import TrainResult, cached_result, load_model
from tests.servers import free_port

SHIPYARD = str(Path(sys.executable).with_name("shipyard"))
MODEL = "digits-classifier"
METRIC = "val_accuracy"
# Same seed and validation fraction everywhere: every version is scored on the same holdout rows.
COMMON = ("--hidden-units", "32", "--batch-size", "128", "--promotion-margin", "0")
PIPELINES = {
    "same-a": ("--epochs", "3"),
    "same-b": ("--epochs", "3"),  # identical to same-a: trained and registered once between them
    "short": ("--epochs", "1", "--learning-rate", "0.0001", "--hidden-units", "2"),  # a clearly worse model
    "faster": ("--epochs", "3", "--learning-rate", "0.01"),
}
EPOCH_LINE = re.compile(r"epoch 1/\d+ train_loss=")


@pytest.fixture
def local_ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Free ports for the local services, and `shipyard down` afterwards whatever happened."""
    ports = {"SHIPYARD_INFERENCE_PORT": free_port(), "SHIPYARD_PREFECT_PORT": free_port(),
             "SHIPYARD_MLFLOW_UI_PORT": free_port()}
    for name, port in ports.items():
        monkeypatch.setenv(name, str(port))
    yield ports
    subprocess.run([SHIPYARD, "down"], timeout=120, check=False, capture_output=True)


def _run_together(pipelines: dict[str, tuple[str, ...]]) -> dict[str, tuple[int, str]]:
    """Start every pipeline at once (as four terminals would) and return each one's exit code and output."""
    procs = {name: subprocess.Popen([SHIPYARD, "run", *COMMON, *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for name, args in pipelines.items()}
    done = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        done[name] = (proc.returncode, out)
    return done


def _train_key(client: MlflowClient, output: str) -> str:
    """Return the training key of the MLflow run a pipeline's summary names."""
    run_id = re.search(r"^MLflow run:  ([0-9a-f]{32})", output, re.M)
    assert run_id, output[-3000:]
    return str(client.get_run(run_id.group(1)).data.tags[TAG_TRAIN_KEY])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_datasets(store: Store) -> int:
    """Check every dataset object, shard and version id against its recorded hash; return the count checked."""
    checked = 0
    objects = {name for prefix in store.list("objects") for name in store.list("objects", prefix)}
    for name in objects:
        assert _sha256(store.read_bytes(*object_key(name))) == name, f"object {name} is corrupt"
        checked += 1
    for shard in store.list("datasets", "digits", "shards"):
        assert _sha256(store.read_bytes("datasets", "digits", "shards", shard)) == shard.removesuffix(".jsonl")
        checked += 1
    versions = list_versions(store, "digits")
    assert len(versions) == 1, f"the demo data was staged as {len(versions)} versions"
    for manifest in versions:
        hasher = VersionHasher()
        for entry in iter_files(store, manifest):
            assert entry.sha256 in objects, f"{manifest.version}: {entry.path} lost ({entry.sha256} not in the store)"
            hasher.add(entry.path, entry.size, entry.sha256)
        assert hasher.version() == manifest.version, f"manifest {manifest.version} does not hash to its id"
        checked += 1
    return checked


def _check_training(store: Store, key: str) -> int:
    """Check a training's checkpoints against their sidecars and its result's weights; return the count checked."""
    prefix = ("training", key, "checkpoints")
    names = store.list(*prefix)
    sidecars = [n for n in names if n.endswith(".json")]
    assert sidecars and len(sidecars) == len([n for n in names if n.endswith(".pt")]), names
    for sidecar in sidecars:
        meta = json.loads(store.read_bytes(*prefix, sidecar))
        data = store.read_bytes(*prefix, sidecar.replace(".json", ".pt"))
        assert (_sha256(data), len(data)) == (meta["sha256"], meta["size"]), f"checkpoint {key}/{sidecar} is corrupt"
    result = cached_result(store, key)
    assert isinstance(result, TrainResult) and result.key == key
    load_model(store, result)  # the published weights load into the recipe's model
    return len(sidecars) + 1


@pytest.mark.drill
def test_four_pipelines_at_once_do_identical_work_once_and_lose_nothing(local_ports: dict[str, int]) -> None:
    done = _run_together(PIPELINES)
    failed = {name: output for name, (code, output) in done.items() if code != 0 or "Traceback" in output}
    assert not failed, "\n\n".join(f"{name} exited {done[name][0]}:\n{out[-2500:]}" for name, out in failed.items())
    settings = load_settings()
    client = MlflowClient(settings.resolved_mlflow_uri(), registry_uri=settings.resolved_mlflow_uri())
    keys = {name: _train_key(client, output) for name, (_, output) in done.items()}
    assert keys["same-a"] == keys["same-b"] and len(set(keys.values())) == 3, keys

    # The identical pair trained once: one of the two ran epochs, the other reused its result.
    trained = [name for name in ("same-a", "same-b") if EPOCH_LINE.search(done[name][1])]
    assert len(trained) == 1, f"the identical training ran {len(trained)} times ({trained})"
    waited = [name for name in ("same-a", "same-b") if "is claimed by another run" in done[name][1]]

    versions = client.search_model_versions(f"name = '{MODEL}'")
    by_key: dict[str, list[str]] = {}
    for version in versions:
        by_key.setdefault(version.tags[TAG_TRAIN_KEY], []).append(str(version.version))
    assert sorted(by_key) == sorted(set(keys.values())), by_key
    assert all(len(v) == 1 for v in by_key.values()), f"a training was registered twice: {by_key}"
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run_keys = [run.data.tags.get(TAG_TRAIN_KEY) for run in runs]
    assert sorted(run_keys) == sorted(set(keys.values())), f"MLflow runs per training: {run_keys}"

    # `champion` ends on the version with the best holdout score (margin 0: the best always wins).
    scores = {str(v.version): float(client.get_model_version(MODEL, v.version).tags[HOLDOUT_METRIC_PREFIX + METRIC])
              for v in versions}
    champion = str(client.get_model_version_by_alias(MODEL, CHAMPION).version)
    assert scores[champion] == max(scores.values()), (champion, scores)
    assert champion != by_key[keys["short"]][0], scores
    # ... and the one server the pipelines rolled out to serves it (the last rollout is not a stale champion).
    served = httpx.get(f"http://127.0.0.1:{local_ports['SHIPYARD_INFERENCE_PORT']}/version", timeout=30).json()
    assert served["model_version"] == champion, (served, champion)

    # Nothing lost, nothing corrupt: every object checked against the hash recorded for it.
    store = filesystem(settings)
    checked = _check_datasets(store) + sum(_check_training(store, key) for key in set(keys.values()))
    assert sorted(store.list("training")) == sorted({*keys.values(), "inputs"})
    print(f"pipelines {len(done)}, versions {len(versions)}, duplicate trainings {len(trained) - 1}, "
          f"objects hash-checked {checked}, objects lost 0, waited on the training claim: {waited or 'none'}")
