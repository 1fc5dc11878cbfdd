"""The registry against a real MLflow server: lineage on the version, the frozen-holdout gate, races, outages."""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from prefect import flow

from shipyard import datasets, registry
from shipyard.cli import main
from shipyard.datasets.demo import write_demo_source
from shipyard.errors import RegistryError
from shipyard.params import RegisterParams, TrainParams
from shipyard.refs import DatasetRef
from shipyard.registry import lineage
from shipyard.settings import load_settings
from shipyard.storage import filesystem
from shipyard.training import TrainResult, train
from tasks.register import await_approval, register_model
from tests.faultproxy import FaultProxy
from tests.stack import MLFLOW_BUCKET, S3, s3_client

CONTEXT = registry.RunContext(flow_run_id="0f0e0d0c-run", flow_run_url="http://127.0.0.1:4200/runs/flow-run/0f0e")
WEAK = {"epochs": 1, "hidden_units": 8}
WORSE = {"epochs": 1, "hidden_units": 2, "learning_rate": 1e-4}
STRONG = {"epochs": 4, "hidden_units": 64}


def _stage(tmp_path: Path, drop_shard: bool = False) -> tuple[DatasetRef, Path]:
    source = write_demo_source(tmp_path / "digits")
    if drop_shard:
        smaller = tmp_path / "digits-smaller"
        shutil.copytree(source, smaller)
        (smaller / "part-00003.parquet").unlink()
        source = smaller
    staged = datasets.stage(filesystem(load_settings()), "digits", str(source))
    return DatasetRef(name="digits", version=staged.version), source


def _train(ref: DatasetRef, data_dir: Path, **params: Any) -> TrainResult:
    return train(filesystem(load_settings()), ref, TrainParams(**params), data_dir)


def _gate(result: TrainResult, model_name: str, **params: Any) -> registry.Registration:
    settings = load_settings()
    store = filesystem(settings)
    client = registry.client(settings)
    register = RegisterParams(model_name=model_name, **params)
    registered = registry.register(client, settings, store, result, model_name, register.metric, CONTEXT)
    return registry.judge(client, settings, store, registered, result, register, CONTEXT)


def _aliases(mlflow_uri: str, model_name: str) -> dict[str, str]:
    return dict(MlflowClient(mlflow_uri, registry_uri=mlflow_uri).get_registered_model(model_name).aliases)


def test_first_is_champion_worse_is_challenger_better_is_promoted_on_the_same_holdout_rows(
        s3: S3, mlflow_uri: str, model_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, source = _stage(tmp_path)
    first = _gate(_train(v1, source, **WEAK), model_name)
    assert first.decision.outcome == "promoted" and first.is_champion

    worse = _gate(_train(v1, source, **WORSE), model_name)
    assert worse.decision.outcome == "challenger" and not worse.is_champion
    assert "does not beat" in worse.decision.reason
    assert _aliases(mlflow_uri, model_name) == {"champion": first.version, "challenger": worse.version}

    v2, smaller = _stage(tmp_path, drop_shard=True)  # new data; the gate still uses v1's holdout rows
    monkeypatch.setenv("SHIPYARD_TRAIN_MODE", "cluster")  # only for the image tag on the version
    monkeypatch.setenv("SHIPYARD_IMAGE", "registry.example/shipyard:1.2.3")
    better = _gate(_train(v2, smaller, **STRONG), model_name, min_metrics={"val_accuracy": 0.5})
    assert better.decision.outcome == "promoted"
    assert _aliases(mlflow_uri, model_name) == {"champion": better.version, "previous": first.version,
                                                "challenger": worse.version}

    # Both comparisons ran on the same frozen rows: v1's validation split, whatever the challenger trained on.
    assert worse.decision.scores is not None and better.decision.scores is not None
    assert worse.decision.scores.holdout.dataset == better.decision.scores.holdout.dataset == v1
    assert worse.decision.scores.rows_digest == better.decision.scores.rows_digest
    assert set(better.decision.scores.metrics) == {better.version, first.version}

    # Any MLflow client finds the lineage and the gate decision on the champion version itself.
    champion = MlflowClient(mlflow_uri, registry_uri=mlflow_uri).get_model_version_by_alias(model_name, "champion")
    tags = champion.tags
    store = filesystem(load_settings())
    expected = {
        lineage.TAG_DATASET: "digits", lineage.TAG_DATASET_VERSION: v2.version,
        lineage.TAG_MANIFEST: v2.manifest_url(store), lineage.TAG_ENTRYPOINT: "shipyard.training.digits:recipe",
        lineage.TAG_FLOW_RUN: CONTEXT.flow_run_id, lineage.TAG_FLOW_RUN_URL: CONTEXT.flow_run_url,
        lineage.TAG_IMAGE: "registry.example/shipyard:1.2.3", lineage.TAG_DEVICE: "cpu", lineage.TAG_GPU: "none",
        "shipyard.gate.decision": "promoted", "shipyard.gate.holdout": str(v1),
        "shipyard.gate.champion_version": first.version,
    }
    assert {k: tags.get(k) for k in expected} == expected
    assert len(tags[lineage.TAG_CODE_HASH]) == 16 and len(tags[lineage.TAG_GIT_COMMIT]) == 40
    assert tags[lineage.TAG_GIT_DIRTY] in {"true", "false"}
    assert float(tags["shipyard.metric.val_accuracy"]) > 0.8 and "shipyard.holdout.val_accuracy" in tags
    assert v2.version in champion.description and "val_accuracy=" in champion.description
    assert "promoted" in champion.description and "\n" not in champion.description

    # The history has every alias move, with its reason and the flow run that made it.
    moves = registry.history(store, model_name)
    assert [(m.alias, m.replaced, m.version) for m in moves] == [
        ("champion", None, first.version), ("challenger", None, worse.version),
        ("previous", None, first.version), ("champion", first.version, better.version)]
    assert all(m.flow_run_id == CONTEXT.flow_run_id and m.reason for m in moves)


def test_four_concurrent_registrations_give_four_versions_and_one_consistent_champion(
        s3: S3, mlflow_uri: str, model_name: str, tmp_path: Path) -> None:
    ref, source = _stage(tmp_path)
    results = [_train(ref, source, epochs=1, hidden_units=width) for width in (2, 4, 8, 32)]
    outcomes: list[registry.Registration] = []
    errors: list[BaseException] = []

    def gate(result: TrainResult) -> None:
        try:
            outcomes.append(_gate(result, model_name))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=gate, args=(r,)) for r in [*results, results[0]]]  # one training twice
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({o.version for o in outcomes}) == 4  # the training registered twice is one version
    assert sum(o.reused for o in outcomes) == 1
    aliases = _aliases(mlflow_uri, model_name)
    holdout = {o.version: o.decision.scores.metrics[o.version]["val_accuracy"]
               for o in outcomes if o.decision.scores is not None}
    assert aliases["champion"] == max(holdout, key=lambda v: holdout[v])
    assert aliases.get("previous") != aliases["champion"]
    moves = [m for m in registry.history(filesystem(load_settings()), model_name) if m.alias == "champion"]
    assert all(later.replaced == earlier.version for earlier, later in itertools.pairwise(moves))
    assert moves[-1].version == aliases["champion"]


@pytest.mark.parametrize("fault", ["500", "401"])
def test_mlflow_failing_during_promotion_fails_with_the_uri_and_leaves_the_aliases(
        s3: S3, mlflow_uri: str, model_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fault: str) -> None:
    ref, source = _stage(tmp_path)
    first = _gate(_train(ref, source, **WEAK), model_name)
    stronger = _train(ref, source, **STRONG)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with FaultProxy(mlflow_uri) as proxy:
        monkeypatch.setenv("SHIPYARD_MLFLOW_TRACKING_URI", proxy.url)
        proxy.inject(fault, method="POST", path="registered-models/alias", times=100)
        with pytest.raises(RegistryError, match=proxy.url.replace(".", r"\.")) as failed:
            _gate(stronger, model_name)
        assert "SHIPYARD_MLFLOW_TRACKING_URI" in str(failed.value) and "\n" not in str(failed.value)
        assert proxy.seen(outcome=fault), failed.value
        assert _aliases(mlflow_uri, model_name) == {"champion": first.version}

        # Reading the champion failing is an error too, never "no champion".
        proxy.clear()
        proxy.inject(fault, method="GET", path="registered-models/get", times=100)
        with pytest.raises(RegistryError, match="failed"):
            _gate(stronger, model_name)
    assert _aliases(mlflow_uri, model_name) == {"champion": first.version}
    assert [m.alias for m in registry.history(filesystem(load_settings()), model_name)] == ["champion"]


def test_a_version_that_fails_to_load_is_never_promoted(
        s3: S3, mlflow_uri: str, model_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, source = _stage(tmp_path)
    first = _gate(_train(ref, source, **WEAK), model_name)
    settings = load_settings()
    store = filesystem(settings)
    client = registry.client(settings)
    stronger = _train(ref, source, **STRONG)
    registered = registry.register(client, settings, store, stronger, model_name, "val_accuracy", CONTEXT)
    _break_artifacts(client, model_name, registered.version)

    decision = registry.judge(client, settings, store, registered, stronger, RegisterParams(model_name=model_name),
                              CONTEXT)
    assert decision.decision.outcome == "challenger" and "fails to load" in decision.decision.reason
    assert _aliases(mlflow_uri, model_name) == {"champion": first.version, "challenger": registered.version}

    assert main(["models", "promote", model_name, registered.version]) == 1
    assert "fails to load" in capsys.readouterr().err
    assert _aliases(mlflow_uri, model_name)["champion"] == first.version


def _break_artifacts(client: MlflowClient, model_name: str, version: str) -> None:
    """Delete the MLmodel file of a version's logged model from the MLflow artifact bucket."""
    found = client.get_model_version(model_name, version)
    model_id = found.model_id or str(found.source).rstrip("/").rsplit("/", 1)[-1]  # models:/m-<id>
    s3 = s3_client(os.environ["AWS_ENDPOINT_URL_S3"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=MLFLOW_BUCKET)
            for o in page.get("Contents", []) if model_id in o["Key"] and o["Key"].endswith("MLmodel")]
    assert keys, f"no MLmodel for {model_id}"
    for key in keys:
        s3.delete_object(Bucket=MLFLOW_BUCKET, Key=key)


def test_approval_holds_a_winner_until_approved_and_records_the_answer(
        s3: S3, mlflow_uri: str, model_name: str, tmp_path: Path) -> None:
    ref, source = _stage(tmp_path)
    settings = load_settings()
    store = filesystem(settings)
    client = registry.client(settings)
    params = RegisterParams(model_name=model_name, require_approval=True)
    result = _train(ref, source, **WEAK)
    registered = registry.register(client, settings, store, result, model_name, params.metric, CONTEXT)

    waiting = registry.judge(client, settings, store, registered, result, params, CONTEXT)
    assert waiting.decision.outcome == "awaiting-approval" and not waiting.is_champion
    assert MlflowClient(mlflow_uri, registry_uri=mlflow_uri).get_registered_model(model_name).aliases == {}

    no = registry.Approval(approved=False, comment="holdout too small")
    rejected = registry.judge(client, settings, store, registered, result, params, CONTEXT, no)
    assert rejected.decision.outcome == "rejected" and _aliases(mlflow_uri, model_name) == {
        "challenger": registered.version}
    yes = registry.Approval(approved=True, comment="looks good")
    approved = registry.judge(client, settings, store, registered, result, params, CONTEXT, yes)
    assert approved.decision.outcome == "promoted" and _aliases(mlflow_uri, model_name) == {
        "champion": registered.version}
    tags = MlflowClient(mlflow_uri, registry_uri=mlflow_uri).get_model_version(model_name, registered.version).tags
    assert tags["shipyard.gate.approval"] == "approved" and tags["shipyard.gate.approval_comment"] == "looks good"
    assert [m.reason for m in registry.history(store, model_name)][-1].endswith("approved: looks good")


def test_the_cli_shows_history_and_rolls_back_with_the_same_checks(
        s3: S3, mlflow_uri: str, model_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, source = _stage(tmp_path)
    first = _gate(_train(ref, source, **WEAK), model_name)
    better = _gate(_train(ref, source, **STRONG), model_name)
    assert better.decision.outcome == "promoted"

    assert main(["models", "rollback", model_name, "--reason", "latency regression"]) == 0
    assert _aliases(mlflow_uri, model_name) == {"champion": first.version, "previous": better.version}
    capsys.readouterr()
    assert main(["models", "history", model_name]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and "latency regression" in lines[-1] and "by cli:" in lines[-1]
    assert CONTEXT.flow_run_id in lines[0]
    assert main(["models", "show", model_name]) == 0
    shown = capsys.readouterr().out
    assert f"version {first.version}  (champion)" in shown and "shipyard.recipe.code_hash" in shown
    assert main(["models", "ls"]) == 0
    assert model_name in capsys.readouterr().out


@flow
def register_with_approval(result: TrainResult, params: RegisterParams) -> registry.Registration:
    """The pipeline's register step, approval included."""
    registration = register_model(result, params)
    if registration.decision.outcome == "awaiting-approval":
        registration = register_model(result, params, await_approval(registration, params))
    return registration


def test_the_flow_pauses_with_a_typed_form_and_promotes_once_approved(
        s3: S3, mlflow_uri: str, prefect_api: str, model_name: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    ref, source = _stage(tmp_path)
    result = _train(ref, source, **WEAK)
    params = RegisterParams(model_name=model_name, require_approval=True, approval_timeout_seconds=300)
    outcome: list[registry.Registration] = []
    thread = threading.Thread(target=lambda: outcome.append(register_with_approval(result, params)), daemon=True)
    thread.start()
    with get_client(sync_client=True) as client:
        paused = None
        for _ in range(600):
            paused = next((r for r in client.read_flow_runs() if r.state is not None and r.state.is_paused()), None)
            if paused is not None:
                break
            time.sleep(0.5)
        assert paused is not None, "the flow never paused for approval"
        assert _aliases(mlflow_uri, model_name) == {}  # nothing moves while waiting
        resume_flow_run(paused.id, run_input={"approve": True, "comment": "ship it"})
    thread.join(timeout=120)
    assert outcome and outcome[0].decision.outcome == "promoted"
    assert _aliases(mlflow_uri, model_name) == {"champion": outcome[0].version}
    tags = MlflowClient(mlflow_uri, registry_uri=mlflow_uri).get_model_version(model_name, outcome[0].version).tags
    assert tags["shipyard.gate.approval_comment"] == "ship it"

    # The decision is also a Prefect artifact: the report and the champion-vs-challenger table.
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        report = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"gate-{model_name}"])))
        table = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"gate-{model_name}-table"])))
    reports = [str(a.data) for a in report]  # one per decision: awaiting approval, then promoted
    assert any("**awaiting-approval**" in r for r in reports)
    assert any("**promoted**" in r and "approved: ship it" in r for r in reports)
    assert table and f"challenger v{outcome[0].version}" in str(table[0].data)
