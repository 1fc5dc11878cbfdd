"""Bad input, everywhere a user can give it: one line naming the culprit, a non-zero exit or a 4xx, no state change.

One real small pipeline run (moto S3, an MLflow server, the Prefect test server) leaves a staged dataset, a
registered champion and a local inference server serving it. Then every row of ``CASES`` (flow parameters,
params files, CLI arguments, settings, dataset files, inference payloads) is tried against that state, and the
store listing (every key, size and ETag of both buckets), the registry (every model's versions and aliases,
every run) and the served version are compared before and after.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from shipyard.cli import main
from tests import servers
from tests.stack import AWS_ENV, MLFLOW_BUCKET, STORE_BUCKET, _reset_buckets, s3_client

MODEL = "bad-input-model"
DATASET = "digits"
ROW = [0.5] * 64


@dataclass(frozen=True)
class World:
    """The state every case runs against, and how to reach it."""

    env: dict[str, str]
    s3_endpoint: str
    mlflow: str
    endpoint: str
    version: str
    model_version: str
    flow_run_id: str


@dataclass
class Outcome:
    """What a case produced: an exit code or HTTP status, and the text a user reads."""

    code: int
    text: str
    raw: str = ""


@pytest.fixture(scope="module")
def world(s3_endpoint: str, mlflow_server: str, prefect_api: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Run the pipeline once (one epoch): a staged dataset, a champion, and a server serving it."""
    from flows.pipeline import pipeline_flow
    from shipyard.params import RegisterParams, TrainParams
    from shipyard.rollout.local import stop
    from shipyard.settings import load_settings

    _reset_buckets(s3_endpoint)
    home = tmp_path_factory.mktemp("bad-input-home")
    env = {**AWS_ENV, "AWS_ENDPOINT_URL_S3": s3_endpoint, "SHIPYARD_STORE_URI": f"s3://{STORE_BUCKET}/store",
           "SHIPYARD_MLFLOW_TRACKING_URI": mlflow_server, "SHIPYARD_MLFLOW_EXPERIMENT": "bad-input",
           "SHIPYARD_HOME": str(home), "SHIPYARD_INFERENCE_PORT": str(servers.free_port()),
           "SHIPYARD_PREFECT_API_URL": prefect_api, "SHIPYARD_SERVING_MAX_REQUEST_BYTES": "65536"}
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(("SHIPYARD_", "AWS_", "MLFLOW_"))]:
            mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        result = pipeline_flow(training=TrainParams(epochs=1, hidden_units=16),
                               registry=RegisterParams(model_name=MODEL))
        assert result.rolled_out and result.endpoint
        yield World(env=env, s3_endpoint=s3_endpoint, mlflow=mlflow_server, endpoint=result.endpoint,
                    version=result.dataset.version, model_version=result.model_version,
                    flow_run_id=result.flow_run_id)
        stop(load_settings())


def snapshot(world: World) -> dict[str, Any]:
    """Every object in both buckets, every model version with its aliases, every run, and what is served."""
    client = s3_client(world.s3_endpoint)
    objects = []
    for bucket in (STORE_BUCKET, MLFLOW_BUCKET):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            objects += [(bucket, o["Key"], o["Size"], o["ETag"]) for o in page.get("Contents", [])]
    mlflow = MlflowClient(world.mlflow, registry_uri=world.mlflow)
    registry = {m.name: (sorted((v.version, v.current_stage, tuple(sorted(v.tags.items())))
                                for v in mlflow.search_model_versions(f"name = '{m.name}'")),
                         sorted(m.aliases.items()))
                for m in mlflow.search_registered_models()}
    runs = sorted(r.info.run_id for r in mlflow.search_runs(
        [e.experiment_id for e in mlflow.search_experiments()], max_results=1000))
    served = httpx.get(f"{world.endpoint}/version", timeout=10).json()
    return {"objects": sorted(objects), "registry": registry, "runs": runs, "served": served}


# --- how a case runs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cli:
    """``shipyard ARGV`` in-process, with extra environment and files written under the test's directory.

    ``{tmp}``, ``{version}`` and ``{free_port}`` in arguments and environment values are filled in.
    """

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    def __call__(self, world: World, tmp: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> Outcome:
        for name, data in self.files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        fill = {"tmp": str(tmp), "version": world.version, "free_port": str(servers.free_port())}
        for name, value in self.env.items():
            monkeypatch.setenv(name, value.format(**fill))
        capsys.readouterr()
        try:
            code = main([a.format(**fill) for a in self.argv])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code, captured.err)


@dataclass(frozen=True)
class Http:
    """One request to the live inference server; the user reads the answer's ``message``."""

    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = "application/json"

    def __call__(self, world: World, tmp: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> Outcome:
        headers = {"content-type": self.content_type} if self.content_type else {}
        resp = httpx.request(self.method, f"{world.endpoint}{self.path}", content=self.body, headers=headers,
                             timeout=30)
        try:
            doc = resp.json()
            text = str(doc.get("message", "")) if isinstance(doc, dict) else resp.text
        except ValueError:
            text = resp.text
        return Outcome(resp.status_code, text, resp.text)


@dataclass(frozen=True)
class Flow:
    """``pipeline_flow(**params)`` called directly, as a deployment or the UI's Run form does."""

    params: dict[str, Any]

    def __call__(self, world: World, tmp: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> Outcome:
        from flows.pipeline import pipeline_flow

        try:
            pipeline_flow(**self.params)
        except Exception as exc:  # noqa: BLE001 - the error a caller sees is the outcome
            # Prefect heads its list of invalid fields with a fixed line; one line per field follows.
            return Outcome(1, str(exc).replace(PREFECT_HEADER, "", 1))
        return Outcome(0, "")


PREFECT_HEADER = "Flow run received invalid parameters:"


def _json(doc: Any) -> bytes:
    import json

    return json.dumps(doc).encode()


def _csv(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


HEADER = ",".join([f"pixel_{i}" for i in range(64)] + ["label"])
GOOD_ROW = ",".join(["1"] * 64 + ["3"])
PARQUET_JUNK = b"PAR1" + os.urandom(64)  # the magic bytes, then nothing a reader understands
Runner = Callable[[World, Path, pytest.CaptureFixture[str], pytest.MonkeyPatch], Outcome]

CASES: list[tuple[str, Runner, str]] = [
    # Flow parameters: options of 'shipyard run', and the flow called directly.
    ("run-negative-epochs", Cli(["run", "--epochs", "-1"]), "training.epochs"),
    ("run-zero-batch-size", Cli(["run", "--batch-size", "0"]), "training.batch_size"),
    ("run-zero-learning-rate", Cli(["run", "--learning-rate", "0"]), "training.learning_rate"),
    ("run-negative-seed", Cli(["run", "--seed", "-5"]), "training.seed"),
    ("run-margin-above-one", Cli(["run", "--promotion-margin", "2"]), "registry.promotion_margin"),
    ("run-bad-model-name", Cli(["run", "--model-name", "Bad Name"]), "registry.model_name"),
    ("run-bad-dataset-name", Cli(["run", "--dataset", "../etc"]), "dataset.name"),
    ("run-malformed-dataset-version", Cli(["run", "--dataset-version", "v1!"]), "dataset.version"),
    ("run-unknown-dataset-version", Cli(["run", "--dataset-version", "0123abcd"]), "0123abcd"),
    ("run-unknown-recipe-module", Cli(["run", "--entrypoint", "no_such_pkg.recipes:recipe"]), "no_such_pkg"),
    ("run-unknown-recipe-function", Cli(["run", "--entrypoint", "shipyard.training.digits:nope"]), "nope"),
    ("run-malformed-entrypoint", Cli(["run", "--entrypoint", "digits"]), "training.entrypoint"),
    ("run-unknown-recipe-parameter", Cli(["run", "--set", "dropout=0.5"]), "dropout"),
    ("run-set-without-equals", Cli(["run", "--set", "dropout"]), "--set dropout"),
    ("run-missing-source", Cli(["run", "--source", "{tmp}/nowhere"]), "nowhere"),
    ("flow-zero-epochs", Flow({"training": {"epochs": 0}}), "epochs"),
    ("flow-unknown-field", Flow({"training": {"epoch": 3}}), "epoch"),
    ("flow-string-learning-rate", Flow({"training": {"learning_rate": "fast"}}), "learning_rate"),
    # Params files.
    ("params-missing-file", Cli(["run", "--params", "{tmp}/missing.yaml"]), "missing.yaml"),
    ("params-not-yaml", Cli(["run", "--params", "{tmp}/p.yaml"], files={"p.yaml": b"training: [epochs: 2\n"}),
     "p.yaml"),
    ("params-truncated-json", Cli(["run", "--params", "{tmp}/p.json"],
                                  files={"p.json": b'{"training": {"epochs": '}), "p.json"),
    ("params-a-list", Cli(["run", "--params", "{tmp}/p.yaml"], files={"p.yaml": b"- epochs\n- 2\n"}), "p.yaml"),
    ("params-unknown-section", Cli(["run", "--params", "{tmp}/p.yaml"], files={"p.yaml": b"trainng:\n  epochs: 2\n"}),
     "trainng"),
    ("params-unknown-key", Cli(["run", "--params", "{tmp}/p.yaml"],
                               files={"p.yaml": b"training:\n  lerning_rate: 0.1\n"}), "training.lerning_rate"),
    ("params-wrong-type", Cli(["run", "--params", "{tmp}/p.yaml"], files={"p.yaml": b"training:\n  epochs: many\n"}),
     "training.epochs"),
    ("params-section-not-a-mapping", Cli(["run", "--params", "{tmp}/p.yaml"], files={"p.yaml": b"training: 5\n"}),
     "training"),
    ("params-binary-junk", Cli(["run", "--params", "{tmp}/p.yaml"], files={"p.yaml": b"\xff\xfe\x00\x81junk"}),
     "p.yaml"),
    ("params-a-directory", Cli(["run", "--params", "{tmp}"]), "params file"),
    ("params-bad-min-metric", Cli(["run", "--params", "{tmp}/p.yaml"],
                                  files={"p.yaml": b"registry:\n  min_metrics:\n    val_accuracy: high\n"}),
     "registry.min_metrics.val_accuracy"),
    # CLI arguments.
    ("cli-unknown-command", Cli(["shipit"]), "shipit"),
    ("cli-unknown-option", Cli(["run", "--epocs", "3"]), "--epocs"),
    ("cli-non-numeric-option", Cli(["run", "--epochs", "three"]), "--epochs"),
    ("data-show-unknown-version", Cli(["data", "show", DATASET, "ffff0000"]), "ffff0000"),
    ("data-show-unknown-dataset", Cli(["data", "show", "no-such-data"]), "no-such-data"),
    ("data-pull-malformed-version", Cli(["data", "pull", DATASET, "../../x"]), "../../x"),
    ("data-diff-unknown-version", Cli(["data", "diff", DATASET, "{version}", "abcdef12"]), "abcdef12"),
    ("data-gc-bad-age", Cli(["data", "gc", "--older-than", "yesterday"]), "--older-than"),
    ("data-stage-bad-name", Cli(["data", "stage", "Bad Name", "{tmp}"]), "Bad Name"),
    ("data-stage-non-numeric-jobs", Cli(["data", "stage", DATASET, "{tmp}", "--jobs", "many"]), "--jobs"),
    ("models-show-unknown-version", Cli(["models", "show", MODEL, "999"]), "999"),
    ("models-show-unknown-model", Cli(["models", "show", "no-such-model"]), "no-such-model"),
    ("models-promote-non-numeric-version", Cli(["models", "promote", MODEL, "latest!"]), "latest!"),
    ("models-rollback-without-previous", Cli(["models", "rollback", MODEL]), "previous"),
    ("rollout-to-unknown-version", Cli(["rollout", "to", "999", "--model-name", MODEL]), "999"),
    ("rollout-to-unknown-model", Cli(["rollout", "to", "1", "--model-name", "no-such-model"]), "no-such-model"),
    ("schedule-bad-cron", Cli(["schedule", "set", "every", "day"]), "every day"),
    ("schedule-unknown-deployment", Cli(["schedule", "pause", "-d", "no-flow/nowhere"]), "no-flow/nowhere"),
    ("deploy-unknown-environment", Cli(["deploy", "staging"]), "staging"),
    # Settings.
    ("setting-port-not-a-number", Cli(["status"], env={"SHIPYARD_INFERENCE_PORT": "http"}), "SHIPYARD_INFERENCE_PORT"),
    ("setting-port-out-of-range", Cli(["run"], env={"SHIPYARD_PREFECT_PORT": "70000"}), "SHIPYARD_PREFECT_PORT"),
    ("setting-unknown-train-mode", Cli(["run"], env={"SHIPYARD_TRAIN_MODE": "gpu"}), "SHIPYARD_TRAIN_MODE"),
    ("setting-negative-timeout", Cli(["run"], env={"SHIPYARD_SERVING_TIMEOUT_SECONDS": "-1"}),
     "SHIPYARD_SERVING_TIMEOUT_SECONDS"),
    ("setting-bad-cron", Cli(["run"], env={"SHIPYARD_LOCAL_PIPELINE_CRON": "daily"}), "SHIPYARD_LOCAL_PIPELINE_CRON"),
    ("setting-store-scheme", Cli(["data", "ls"], env={"SHIPYARD_STORE_URI": "ftp://files/store"}),
     "SHIPYARD_STORE_URI"),
    ("setting-store-no-bucket", Cli(["run"], env={"SHIPYARD_STORE_URI": "s3:///store"}), "SHIPYARD_STORE_URI"),
    ("setting-store-unreachable", Cli(["run"], env={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:{free_port}"}),
     "SHIPYARD_STORE_URI"),
    ("setting-mlflow-unreachable", Cli(["run"], env={"SHIPYARD_MLFLOW_TRACKING_URI": "http://127.0.0.1:{free_port}"}),
     "SHIPYARD_MLFLOW_TRACKING_URI"),
    ("setting-mlflow-scheme", Cli(["models", "ls"], env={"SHIPYARD_MLFLOW_TRACKING_URI": "gopher://mlflow"}),
     "SHIPYARD_MLFLOW_TRACKING_URI"),
    ("setting-prefect-unreachable", Cli(["schedule"], env={"SHIPYARD_PREFECT_API_URL":
                                                           "http://127.0.0.1:{free_port}/api"}),
     "SHIPYARD_PREFECT_API_URL"),
    # Dataset files.
    ("dataset-missing-directory", Cli(["data", "stage", DATASET, "{tmp}/nowhere"]), "nowhere"),
    ("dataset-empty-directory", Cli(["data", "stage", DATASET, "{tmp}/empty"], files={"empty/.keep": b""}),
     "empty"),
    ("dataset-empty-csv", Cli(["data", "stage", DATASET, "{tmp}/d"], files={"d/train.csv": b""}), "d"),
    ("dataset-header-only-csv", Cli(["data", "stage", DATASET, "{tmp}/d"], files={"d/train.csv": _csv(HEADER)}),
     "no rows"),
    ("dataset-binary-junk-csv", Cli(["data", "stage", DATASET, "{tmp}/d"],
                                    files={"d/train.csv": b"\x00\xff\xfe" + os.urandom(256)}), "train.csv"),
    ("dataset-corrupt-parquet", Cli(["data", "stage", DATASET, "{tmp}/d"], files={"d/train.parquet": PARQUET_JUNK}),
     "train.parquet"),
    ("dataset-junk-npz", Cli(["data", "stage", DATASET, "{tmp}/d"], files={"d/arrays.npz": b"PK\x03\x04junk"}),
     "arrays.npz"),
    ("dataset-shards-with-other-columns", Cli(["data", "stage", DATASET, "{tmp}/d"], files={
        "d/a.csv": _csv(HEADER, GOOD_ROW), "d/b.csv": _csv(HEADER.replace("label", "target"), GOOD_ROW)}), "b.csv"),
    ("dataset-ragged-csv", Cli(["data", "stage", DATASET, "{tmp}/d"],
                               files={"d/train.csv": _csv("a,b,c", "1,2,3", "4,5,6,7,8")}), "train.csv"),
    ("dataset-csv-without-label", Cli(["run", "--source", "{tmp}/d", "--epochs", "1"],
                                      files={"d/train.csv": _csv(HEADER.replace(",label", ""), ",".join(["1"] * 64))}),
     "label"),
    ("dataset-csv-non-numeric-pixels", Cli(["run", "--source", "{tmp}/d", "--epochs", "1"],
                                           files={"d/train.csv": _csv(HEADER, ",".join(["x"] * 64 + ["3"]))}),
     "pixel_0"),
    # Inference payloads.
    ("http-not-json", Http("POST", "/invocations", b'{"inputs": [[1, 2'), "JSON"),
    ("http-wrong-width", Http("POST", "/invocations", _json({"inputs": [[1.0, 2.0]]})), "shape"),
    ("http-three-dimensions", Http("POST", "/invocations", _json({"inputs": [[ROW]]})), "shape"),
    ("http-strings", Http("POST", "/invocations", _json({"inputs": [["a"] * 64]})), "inputs"),
    ("http-ragged-rows", Http("POST", "/invocations", _json({"inputs": [ROW, ROW[:10]]})), "inputs"),
    ("http-no-rows", Http("POST", "/invocations", _json({"inputs": []})), "inputs"),
    ("http-nan", Http("POST", "/invocations", b'{"inputs": [[NaN' + b", 0.5" * 63 + b"]]}"), "JSON"),
    ("http-infinity", Http("POST", "/invocations", _json({"inputs": [[math.inf] * 64]})), "JSON"),
    ("http-missing-field", Http("POST", "/invocations", _json({"rows": [ROW]})), "inputs"),
    ("http-inputs-not-a-list", Http("POST", "/invocations", _json({"inputs": 5})), "inputs"),
    ("http-empty-body", Http("POST", "/invocations", b""), "body"),
    ("http-text-plain", Http("POST", "/invocations", b"0.5,0.5", content_type="text/plain"), "content type"),
    ("http-too-large", Http("POST", "/invocations", _json({"inputs": [ROW] * 2000})), "bytes"),
    ("http-swap-without-token", Http("POST", "/admin/promote", _json({"model_uri": f"models:/{MODEL}/1"})), "token"),
]


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    return lines[0]


@pytest.mark.parametrize(("runner", "culprit"), [pytest.param(r, c, id=i) for i, r, c in CASES])
def test_bad_input_gets_one_line_naming_the_culprit_and_changes_nothing(
        world: World, runner: Runner, culprit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    before = snapshot(world)
    outcome = runner(world, tmp_path, capsys, monkeypatch)
    after = snapshot(world)
    assert "Traceback" not in outcome.text + outcome.raw, outcome.text + outcome.raw
    line = _one_line(outcome.text)
    print(f"[{outcome.code}] {line}")  # the corpus's messages, for review with -s
    assert culprit in line, line
    if isinstance(runner, Http):
        assert 400 <= outcome.code < 500, (outcome.code, line)
    else:
        assert outcome.code != 0, line
    assert after == before


def test_the_corpus_covers_every_kind_of_input() -> None:
    kinds = {i.split("-", 1)[0] for i, _, _ in CASES}
    assert len(CASES) >= 40
    assert {"run", "flow", "params", "cli", "data", "models", "rollout", "schedule", "setting", "dataset",
            "http"} <= kinds, kinds


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
