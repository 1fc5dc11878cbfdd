"""The registry half of promotion (`shipyard.registry.gate` and `.aliases`), fast.

A real MLflow registry (SQLite, in this process) and a real store (local directory). Versions are created by
hand from two tiny trainings made once per module, with a loadable model (or a broken one) as their source, so
the gate's decisions, the alias moves and their history are checked in about a second each. The same gate
against a real MLflow server, with models logged by `register`, is in tests/integration/test_registry_gate.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from shipyard import datasets
from shipyard.datasets.demo import write_demo_source
from shipyard.errors import RegistryError, ShipyardError
from shipyard.params import RegisterParams, TrainParams
from shipyard.refs import DatasetRef
from shipyard.registry import (
    TAG_TRAIN_KEY,
    AliasMove,
    Approval,
    Holdout,
    Registered,
    RunContext,
    already_champion,
    history,
    judge,
    load_failure,
    promote,
)
from shipyard.registry.aliases import move, record
from shipyard.settings import Settings
from shipyard.storage import AlreadyExists, Store, filesystem
from shipyard.training import TrainResult, train

CONTEXT = RunContext(flow_run_id="0f0e-run", flow_run_url="http://127.0.0.1:4200/runs/flow-run/0f0e")
SETTING = "SHIPYARD_MLFLOW_TRACKING_URI"
_NUMBERS = itertools.count(1)


class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """The smallest model MLflow can load: what a version's artifacts must be for the load check to pass."""

    def predict(self, context: Any, model_input: Any) -> Any:
        return model_input


class Unloadable(Echo):
    """A model whose loading fails with ``message`` (as a recipe's missing dependency would)."""

    def __init__(self, message: str) -> None:
        self.message = message

    def load_context(self, context: Any) -> None:
        raise ValueError(self.message)


LONG = "x" * 300 + "\nsecond line"


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SQLite registry for the module, also the one `models:/` URIs resolve in (for the load check)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:  # what mlflow.set_*_uri set, put back after the module
        patch.setattr(registry_utils, "_registry_uri", uri)
        patch.setattr(tracking_utils, "_tracking_uri", uri)
        yield uri


@pytest.fixture(scope="module")
def registry_client(registry_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Artifact locations a version can be created from: one that loads, two that fail to, one without MLmodel."""
    root = tmp_path_factory.mktemp("models")
    mlflow.pyfunc.save_model(str(root / "loads"), python_model=Echo(), pip_requirements=[])
    for kind, message in (("silent", ""), ("long", LONG)):
        mlflow.pyfunc.save_model(str(root / kind), python_model=Unloadable(message), pip_requirements=[])
    (root / "broken").mkdir()
    return {kind: (root / kind).as_uri() for kind in ("loads", "silent", "long", "broken")}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def shared_store(home: Settings) -> Store:
    """The store the trainings and the staged digits live in; each test's model has its own alias history."""
    return filesystem(home)


@pytest.fixture(scope="module")
def trained(shared_store: Store, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    """A weak and a strong training on the same staged digits (once per module)."""
    source = write_demo_source(tmp_path_factory.mktemp("source") / "digits")
    ref = DatasetRef(name="digits", version=datasets.stage(shared_store, "digits", str(source)).version)
    return {"weak": train(shared_store, ref, TrainParams(epochs=1, hidden_units=2), source),
            "strong": train(shared_store, ref, TrainParams(epochs=2, hidden_units=32), source)}


@pytest.fixture
def name(registry_client: MlflowClient, request: pytest.FixtureRequest) -> str:
    """A registered model of this test's own, with no versions yet."""
    model = f"m{next(_NUMBERS)}-" + request.node.name[5:40].replace("_", "-")
    registry_client.create_registered_model(model)
    return model


def _version(client: MlflowClient, name: str, source: str, result: TrainResult | None = None) -> Registered:
    tags = {TAG_TRAIN_KEY: result.key} if result is not None else {}
    created = client.create_model_version(name, source=source, tags=tags)
    return Registered(model_name=name, version=str(created.version), run_id="r", experiment_id="0", reused=False,
                      input_example=[[0.0] * 64])


@pytest.fixture
def versions(registry_client: MlflowClient, name: str, sources: dict[str, str]) -> list[str]:
    """Versions 1, 2 and 3 of this test's model (no training behind them: for the alias moves)."""
    return [_version(registry_client, name, sources["loads"]).version for _ in range(3)]


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def _set(client: MlflowClient, name: str, **aliases: str) -> None:
    for alias, version in aliases.items():
        client.set_registered_model_alias(name, alias, version)


def _moves(store: Store, name: str) -> list[tuple[str, str | None, str | None]]:
    return [(m.alias, m.replaced, m.version) for m in history(store, name)]


def _purposes(store: Store, name: str) -> list[str]:
    """What each holder of the model's alias lease said it was for, in turn."""
    leases = sorted((n for n in store.list("registry", name, "aliases") if n.endswith(".lease")),
                    key=lambda n: int(n.split(".")[0]))
    return [json.loads(store.read_bytes("registry", name, "aliases", n))["purpose"] for n in leases]


# --- alias moves and their history --------------------------------------------------------------------------


def test_a_move_points_each_alias_in_order_and_records_each_change_with_its_reason(
        registry_client: MlflowClient, name: str, versions: list[str], store: Store,
        caplog: pytest.LogCaptureFixture) -> None:
    _set(registry_client, name, champion="1", challenger="3")
    with caplog.at_level(logging.INFO, logger="shipyard.registry.aliases"):
        moves = move(registry_client, store, name, [("previous", "1"), ("champion", "2"), ("challenger", "3")],
                     "beats champion v1", CONTEXT, actor="cli: alice")
    assert caplog.messages == [f"{name}@previous: None -> 1 (beats champion v1)",
                               f"{name}@champion: 1 -> 2 (beats champion v1)"]
    assert _aliases(registry_client, name) == {"champion": "2", "previous": "1", "challenger": "3"}
    # challenger already pointed at 3: nothing moved, nothing recorded for it
    assert [(m.alias, m.replaced, m.version) for m in moves] == [("previous", None, "1"), ("champion", "1", "2")]
    assert history(store, name) == moves
    assert {(m.model_name, m.reason, m.flow_run_id, m.flow_run_url, m.actor) for m in moves} == {
        (name, "beats champion v1", CONTEXT.flow_run_id, CONTEXT.flow_run_url, "cli: alice")}
    assert all(m.at.utcoffset() == timedelta(0) for m in moves)  # history times are UTC, whatever the host's zone


def test_a_move_to_none_removes_the_alias_and_the_pipeline_is_the_default_actor(
        registry_client: MlflowClient, name: str, versions: list[str], store: Store) -> None:
    _set(registry_client, name, champion="1", challenger="3")
    move(registry_client, store, name, [("challenger", None), ("previous", None)], "promoted", RunContext())
    assert _aliases(registry_client, name) == {"champion": "1"}
    [entry] = history(store, name)
    assert (entry.alias, entry.replaced, entry.version, entry.actor, entry.flow_run_id) == (
        "challenger", "3", None, "pipeline", None)


@pytest.mark.parametrize("missing", ["9", "x"])
def test_a_move_failing_half_way_puts_back_every_alias_it_changed_and_records_nothing(
        registry_client: MlflowClient, name: str, versions: list[str], store: Store, registry_uri: str,
        missing: str) -> None:
    _set(registry_client, name, champion="1", challenger="3")
    with pytest.raises(RegistryError) as failed:
        move(registry_client, store, name, [("previous", "1"), ("challenger", None), ("champion", "2"),
                                            ("champion", missing)], "promote", CONTEXT)
    message = str(failed.value)
    assert registry_uri in message and SETTING in message and "\n" not in message
    assert _aliases(registry_client, name) == {"champion": "1", "challenger": "3"}
    assert history(store, name) == []


def test_a_failed_move_whose_restore_fails_too_says_which_alias_to_check(
        registry_client: MlflowClient, name: str, versions: list[str], store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _set(registry_client, name, champion="1", challenger="3")

    def refuse(*args: object) -> None:
        raise MlflowException("the registry is read-only")

    # previous is added, challenger moved, then champion fails: putting back deletes previous, which fails too
    monkeypatch.setattr(registry_client, "delete_registered_model_alias", refuse)
    with pytest.raises(RegistryError) as failed:
        move(registry_client, store, name, [("previous", "1"), ("challenger", "2"), ("champion", "9")], "p",
             CONTEXT)
    message = str(failed.value)
    assert message.startswith("MLflow at ") and "\n" not in message
    assert (f"; and putting alias 'previous' of {name} back to version None failed too (MLflow at " in message
            and f"read-only): check with 'shipyard models show {name}'" in message)
    # the later alias (challenger) was put back before the restore reached the one that failed
    assert _aliases(registry_client, name) == {"champion": "1", "challenger": "3", "previous": "1"}
    assert history(store, name) == []


def test_a_failed_restore_names_the_version_the_alias_should_have_gone_back_to(
        registry_client: MlflowClient, name: str, versions: list[str], store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _set(registry_client, name, champion="1", challenger="3")
    calls = 0
    real = registry_client.set_registered_model_alias

    def first_only(*args: Any) -> None:  # challenger moves, then every write fails
        nonlocal calls
        calls += 1
        if calls > 1:
            raise MlflowException("the registry is read-only")
        real(*args)

    monkeypatch.setattr(registry_client, "set_registered_model_alias", first_only)
    with pytest.raises(RegistryError, match=f"; and putting alias 'challenger' of {name} back to version 3 failed"):
        move(registry_client, store, name, [("challenger", "2"), ("champion", "2")], "p", CONTEXT)


def test_the_history_is_in_time_order_then_move_order_and_reads_only_its_own_entries(store: Store) -> None:
    t1 = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)

    def entry(at: datetime, alias: str, model: str = "m") -> AliasMove:
        return AliasMove(at=at, model_name=model, alias=alias, version="2", replaced=None, reason=f"{alias} {at}")

    later = entry(t1 + timedelta(microseconds=1), "challenger")
    record(store, later)
    record(store, entry(t1, "previous"), 1)
    record(store, entry(t1, "previous", model="other"))
    record(store, entry(t1, "champion"), 0)
    store.write_bytes(b"not an entry", "registry", "m", "history", "README")
    assert [(m.alias, m.at) for m in history(store, "m")] == [("champion", t1), ("previous", t1),
                                                               ("challenger", later.at)]
    assert history(store, "other")[0].model_name == "other" and history(store, "nobody") == []


def test_the_history_is_never_rewritten_an_entry_under_a_taken_name_is_refused(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Names carry the time to the microsecond and 8 random hex digits; should two moves still meet, the second
    # must fail rather than replace the first one's record.
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=7))  # the names draw their random part from it
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = AliasMove(at=at, model_name="m", alias="champion", version="2", replaced=None, reason="first")
    record(store, first)
    with pytest.raises(AlreadyExists):
        record(store, first.model_copy(update={"reason": "second"}))
    assert [m.reason for m in history(store, "m")] == ["first"]


# --- already champion, promote's input checks ---------------------------------------------------------------


def test_already_champion_answers_kept_for_the_champion_only_and_writes_nothing(
        registry_client: MlflowClient, name: str, sources: dict[str, str], store: Store) -> None:
    one, two = (_version(registry_client, name, sources["loads"]) for _ in range(2))
    _set(registry_client, name, champion="2")
    assert already_champion(registry_client, one, "val_accuracy") is None
    kept = already_champion(registry_client, two, "val_f1")
    assert kept is not None and kept.is_champion and not kept.promoted
    assert (kept.version, kept.champion_version, kept.model_name) == ("2", "2", name)
    assert kept.decision.model_dump() == {"outcome": "kept", "reason": "version 2 is already champion",
                                          "metric": "val_f1", "champion_before": "2", "scores": None,
                                          "approval": None}
    assert _aliases(registry_client, name) == {"champion": "2"} and history(store, name) == []


@pytest.mark.parametrize("version, says", [
    ("v2", "'v2' is not a version number of {name} (see its versions with: shipyard models show {name})"),
    ("7", "MLflow at {uri} (" + SETTING + ") failed: "),
    ("2", "{name} version 2 is already champion"),
])
def test_promote_refuses_a_bad_version_before_taking_the_lease(
        registry_client: MlflowClient, name: str, versions: list[str], store: Store, home: Settings,
        registry_uri: str, version: str, says: str) -> None:
    _set(registry_client, name, champion="2")
    with pytest.raises(RegistryError) as failed:
        promote(registry_client, home, store, name, version, "by hand", CONTEXT, actor="cli: bob")
    assert str(failed.value).startswith(says.format(name=name, uri=registry_uri))
    assert _aliases(registry_client, name) == {"champion": "2"}
    assert store.list("registry", name) == []  # no lease taken, no history


@pytest.mark.parametrize("source, says", [
    ("loads", None),
    ("silent", "ValueError: "),  # an exception without a message still says what it was
    ("long", "ValueError: " + "x" * 200),  # one line, cut at 200 characters
])
def test_the_load_check_loads_the_version_as_served_and_says_in_one_line_why_not(
        registry_client: MlflowClient, name: str, sources: dict[str, str], source: str, says: str | None) -> None:
    _version(registry_client, name, sources[source])
    assert load_failure(registry_client, name, "1") == says


def test_the_load_check_of_a_version_missing_or_without_its_artifacts(
        registry_client: MlflowClient, name: str, sources: dict[str, str], registry_uri: str) -> None:
    _version(registry_client, name, sources["broken"])
    broken = load_failure(registry_client, name, "1")
    assert broken is not None and broken.startswith(("MlflowException: ", "OSError: ")) and "\n" not in broken
    with pytest.raises(RegistryError, match=f"^MLflow at {registry_uri} \\({SETTING}\\) failed: "):
        load_failure(registry_client, name, "2")  # an error from MLflow is an error, not "does not load"


def _assert_pulled_into_the_dataset_cache(settings: Settings) -> None:
    """The holdout rows were pulled into the dataset cache that training and `shipyard data pull` share, only."""
    assert sorted(p.name for p in settings.home.iterdir()) == ["cache", "store"]
    assert [p.name for p in (settings.home / "cache").iterdir()] == ["datasets"]
    assert (settings.home / "cache" / "datasets" / "versions" / "digits").is_dir()


# --- the gate: judge and _decide -----------------------------------------------------------------------------


def _judge(client: MlflowClient, settings: Settings, store: Store, registered: Registered, result: TrainResult,
           approval: Approval | None = None, **params: Any) -> Any:
    return judge(client, settings, store, registered, result, RegisterParams(model_name=registered.model_name,
                                                                             **params), CONTEXT, approval)


def _tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    return dict(client.get_model_version(name, version).tags)


def test_the_first_version_is_champion_a_weaker_one_challenger_a_stronger_one_promoted(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult], caplog: pytest.LogCaptureFixture) -> None:
    weak, strong = trained["weak"], trained["strong"]
    first = _version(registry_client, name, sources["loads"], weak)
    with caplog.at_level(logging.INFO, logger="shipyard.registry.gate"):
        one = _judge(registry_client, home, shared_store, first, weak)
    assert f"gate for {name} version 1: promoted ({one.decision.reason})" in caplog.messages
    assert (one.decision.outcome, one.champion_version, one.decision.champion_before) == ("promoted", "1", None)
    assert one.decision.reason.startswith("first champion: val_accuracy ")
    assert _aliases(registry_client, name) == {"champion": "1"}

    stronger = _version(registry_client, name, sources["loads"], strong)
    weaker = _version(registry_client, name, sources["loads"], weak)
    _set(registry_client, name, champion="2")  # the strong one is champion; the weak one (v3) challenges it
    lost = _judge(registry_client, home, shared_store, weaker, weak)
    assert (lost.decision.outcome, lost.champion_version, lost.decision.champion_before) == ("challenger", "2", "2")
    assert "does not beat champion v2's" in lost.decision.reason
    assert lost.decision.scores is not None and set(lost.decision.scores.metrics) == {"2", "3"}
    assert lost.decision.scores.metrics["3"] == one.decision.scores.metrics["1"]  # same rows, same weights
    assert _aliases(registry_client, name) == {"champion": "2", "challenger": "3"}
    assert _tags(registry_client, name, "3")["shipyard.gate.decision"] == "challenger"
    assert _moves(shared_store, name) == [("champion", None, "1"), ("challenger", None, "3")]
    assert history(shared_store, name)[-1].reason == lost.decision.reason

    _set(registry_client, name, champion="3")  # now the weak one holds champion, and the strong one (v2) beats it
    won = _judge(registry_client, home, shared_store, stronger, strong)
    assert (won.decision.outcome, won.champion_version, won.is_champion) == ("promoted", "2", True)
    assert "beats champion v3's" in won.decision.reason
    assert _aliases(registry_client, name) == {"champion": "2", "previous": "3", "challenger": "3"}
    assert _moves(shared_store, name)[-2:] == [("previous", None, "3"), ("champion", "3", "2")]
    tags = _tags(registry_client, name, "2")
    assert (tags["shipyard.gate.decision"], tags["shipyard.gate.champion_version"]) == ("promoted", "3")
    assert _purposes(shared_store, name) == [f"gate {name} v1", f"gate {name} v3", f"gate {name} v2"]
    _assert_pulled_into_the_dataset_cache(home)


def test_the_gate_removes_challenger_from_the_version_it_promotes(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    champion = _version(registry_client, name, sources["loads"], trained["weak"])
    challenger = _version(registry_client, name, sources["loads"], trained["strong"])
    _set(registry_client, name, champion=champion.version, challenger=challenger.version)
    won = _judge(registry_client, home, shared_store, challenger, trained["strong"])
    assert won.promoted and _aliases(registry_client, name) == {"champion": "2", "previous": "1"}


def test_a_rerun_on_the_champion_is_kept_and_judges_nothing(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    registered = _version(registry_client, name, sources["loads"])  # no training: judging it would fail
    _set(registry_client, name, champion="1")
    kept = _judge(registry_client, home, shared_store, registered, trained["weak"])
    assert (kept.decision.outcome, kept.champion_version) == ("kept", "1")
    assert history(shared_store, name) == [] and "shipyard.gate.decision" not in _tags(registry_client, name, "1")


def test_a_version_made_champion_while_the_gate_waited_for_the_lease_is_kept_and_judged_no_further(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult], monkeypatch: pytest.MonkeyPatch) -> None:
    # Two pipelines registered the same training (one version); the other one's gate promoted it between this
    # gate's rerun check and its turn at the alias lease.
    def raced(client: MlflowClient, registered: Registered, metric: str) -> None:
        _set(client, registered.model_name, champion=registered.version)

    monkeypatch.setattr("shipyard.registry.gate.already_champion", raced)
    registered = _version(registry_client, name, sources["loads"])  # no training: judging it would fail
    kept = _judge(registry_client, home, shared_store, registered, trained["weak"], metric="val_f1")
    assert kept.decision.model_dump() == {"outcome": "kept", "reason": "version 1 is already champion",
                                          "metric": "val_f1", "champion_before": "1", "scores": None,
                                          "approval": None}
    assert (kept.version, kept.champion_version, kept.model_name) == ("1", "1", name)
    assert history(shared_store, name) == [] and "shipyard.gate.decision" not in _tags(registry_client, name, "1")


def test_a_winner_that_fails_to_load_is_challenger_with_the_reason(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    registered = _version(registry_client, name, sources["broken"], trained["strong"])
    lost = _judge(registry_client, home, shared_store, registered, trained["strong"])
    assert lost.decision.outcome == "challenger"
    assert lost.decision.reason.startswith("version 1 fails to load (")
    assert lost.decision.reason.endswith("); never promoted")
    assert _aliases(registry_client, name) == {"challenger": "1"}


def test_thresholds_and_margin_decide_against_the_champion_on_the_same_holdout(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    strong = trained["strong"]
    champion = _version(registry_client, name, sources["loads"], trained["weak"])
    _set(registry_client, name, champion=champion.version)
    low = _judge(registry_client, home, shared_store, _version(registry_client, name, sources["loads"], strong),
                 strong, min_metrics={"val_accuracy": 1.01})
    assert low.decision.outcome == "challenger" and low.decision.reason.startswith("below the thresholds: ")
    held = _judge(registry_client, home, shared_store, _version(registry_client, name, sources["loads"], strong),
                  strong, promotion_margin=1.0)
    assert held.decision.outcome == "challenger" and "by the margin 1.0" in held.decision.reason
    assert _aliases(registry_client, name) == {"champion": "1", "challenger": "3"}


def test_approval_holds_rejects_or_promotes_a_winner_and_the_answer_is_recorded(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    weak = trained["weak"]
    registered = _version(registry_client, name, sources["loads"], weak)
    waiting = _judge(registry_client, home, shared_store, registered, weak, require_approval=True)
    assert waiting.decision.outcome == "awaiting-approval" and waiting.champion_version is None
    assert waiting.decision.reason.endswith("on the holdout; waiting for approval")
    assert _aliases(registry_client, name) == {}

    no = _judge(registry_client, home, shared_store, registered, weak, Approval(approved=False, comment="small"),
                require_approval=True)
    assert (no.decision.outcome, no.decision.reason) == ("rejected", "rejected by the approver: small")
    assert _aliases(registry_client, name) == {"challenger": "1"}
    tags = _tags(registry_client, name, "1")
    assert (tags["shipyard.gate.approval"], tags["shipyard.gate.approval_comment"]) == ("rejected", "small")
    silent = _judge(registry_client, home, shared_store, registered, weak, Approval(approved=False),
                    require_approval=True)
    assert silent.decision.reason == "rejected by the approver: no comment"

    yes = _judge(registry_client, home, shared_store, registered, weak, Approval(approved=True),
                 require_approval=True)
    assert yes.promoted and yes.decision.reason.endswith("on the holdout; approved: no comment")
    assert _aliases(registry_client, name) == {"champion": "1"}
    assert _moves(shared_store, name)[-2:] == [("champion", None, "1"), ("challenger", "1", None)]
    assert _tags(registry_client, name, "1")["shipyard.gate.approval"] == "approved"


def test_a_first_champion_leaves_a_previous_alias_alone(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    _version(registry_client, name, sources["loads"])
    _set(registry_client, name, previous="1")  # champion removed by hand, say
    registered = _version(registry_client, name, sources["loads"], trained["weak"])
    assert _judge(registry_client, home, shared_store, registered, trained["weak"]).promoted
    assert _aliases(registry_client, name) == {"champion": "2", "previous": "1"}


def test_the_gate_scores_on_the_holdout_recorded_on_the_model_or_the_one_asked_for(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    weak = trained["weak"]
    recorded = Holdout(dataset=weak.dataset, seed=7, val_fraction=0.3)
    registry_client.set_registered_model_tag(name, "shipyard.holdout", recorded.model_dump_json())
    registered = _version(registry_client, name, sources["loads"], weak)
    decision = _judge(registry_client, home, shared_store, registered, weak).decision
    assert decision.scores is not None and decision.scores.holdout == recorded
    missing = weak.dataset.model_copy(update={"version": "00000000deadbeef"})
    with pytest.raises(ShipyardError, match="00000000deadbeef"):
        _judge(registry_client, home, shared_store, _version(registry_client, name, sources["loads"], weak), weak,
               holdout=missing)


def test_mlflow_failing_while_the_gate_reads_the_champion_fails_with_the_uri_and_moves_nothing(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult], registry_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _version(registry_client, name, sources["loads"], trained["weak"])
    _set(registry_client, name, champion="1")
    registered = _version(registry_client, name, sources["loads"], trained["strong"])

    def outage(*args: object) -> None:
        raise MlflowException("503 Service Unavailable")

    monkeypatch.setattr(registry_client, "get_model_version", outage)
    with pytest.raises(RegistryError, match=f"^MLflow at {registry_uri} \\({SETTING}\\) failed: 503"):
        _judge(registry_client, home, shared_store, registered, trained["strong"])
    assert _aliases(registry_client, name) == {"champion": "1"} and history(shared_store, name) == []


def test_a_champion_without_its_training_in_the_store_fails_the_gate_by_name(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    _version(registry_client, name, sources["loads"])
    _set(registry_client, name, champion="1")
    registered = _version(registry_client, name, sources["loads"], trained["strong"])
    with pytest.raises(RegistryError, match=r"^champion version 1 has no training result in the store"):
        _judge(registry_client, home, shared_store, registered, trained["strong"])
    assert _aliases(registry_client, name) == {"champion": "1"} and history(shared_store, name) == []


# --- promote by hand -----------------------------------------------------------------------------------------


def test_promote_by_hand_makes_the_challenger_champion_and_keeps_the_old_one_as_previous(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    _version(registry_client, name, sources["loads"], trained["strong"])
    _version(registry_client, name, sources["loads"], trained["weak"])
    _set(registry_client, name, champion="1", challenger="2")
    decision = promote(registry_client, home, shared_store, name, "2", "latency is better", CONTEXT, "cli: carol")
    assert (decision.outcome, decision.reason, decision.champion_before) == ("promoted", "latency is better", "1")
    assert decision.metric == "val_accuracy"  # the model has no thresholds: the default metric
    assert decision.scores is not None and set(decision.scores.metrics) == {"2"}  # no margin: only its thresholds
    assert _aliases(registry_client, name) == {"champion": "2", "previous": "1"}
    moves = history(shared_store, name)
    assert [(m.alias, m.replaced, m.version) for m in moves] == [
        ("previous", None, "1"), ("champion", "1", "2"), ("challenger", "2", None)]
    assert {(m.actor, m.reason) for m in moves} == {("cli: carol", "latency is better")}
    assert _tags(registry_client, name, "2")["shipyard.gate.decision"] == "promoted"
    assert _purposes(shared_store, name) == [f"cli: carol: promote {name} v2"]
    _assert_pulled_into_the_dataset_cache(home)

    # a threshold the version meets exactly is met; a challenger on another version stays
    exact = decision.scores.metrics["2"]["val_accuracy"]
    thresholds = {"val_loss": 0.0, "val_accuracy": exact}
    registry_client.set_registered_model_tag(name, "shipyard.gate.min_metrics", json.dumps(thresholds))
    _version(registry_client, name, sources["loads"], trained["weak"])
    _set(registry_client, name, challenger="1")
    again = promote(registry_client, home, shared_store, name, "3", "same", CONTEXT, "cli")
    assert (again.champion_before, again.metric) == ("2", "val_loss")  # the metric: the first threshold's
    assert _aliases(registry_client, name) == {"champion": "3", "previous": "2", "challenger": "1"}


def test_promote_by_hand_with_no_champion_moves_champion_only(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult]) -> None:
    _version(registry_client, name, sources["loads"], trained["weak"])
    _version(registry_client, name, sources["loads"])
    _set(registry_client, name, previous="2")  # champion removed by hand, say
    recorded = Holdout(dataset=trained["weak"].dataset, seed=7, val_fraction=0.3)
    registry_client.set_registered_model_tag(name, "shipyard.holdout", recorded.model_dump_json())
    decision = promote(registry_client, home, shared_store, name, "1", "first", CONTEXT, "cli")
    assert decision.scores is not None and decision.scores.holdout == recorded  # the model's frozen holdout
    assert _aliases(registry_client, name) == {"champion": "1", "previous": "2"}
    assert _moves(shared_store, name) == [("champion", None, "1")]


def test_promote_by_hand_of_a_version_without_its_training_says_so(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store,
        home: Settings) -> None:
    _version(registry_client, name, sources["loads"])
    with pytest.raises(RegistryError, match=f"^{name} version 1 has no training result in the store"):
        promote(registry_client, home, shared_store, name, "1", "by hand", CONTEXT, "cli")
    assert _aliases(registry_client, name) == {}


def test_promote_refuses_under_the_lease_a_version_made_champion_while_it_waited(
        registry_client: MlflowClient, name: str, versions: list[str], shared_store: Store, home: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def raced(client: MlflowClient, model_name: str, version: str) -> None:  # passes, then the gate promotes it
        _set(client, model_name, champion=version)

    monkeypatch.setattr("shipyard.registry.gate._check_promotable", raced)
    with pytest.raises(RegistryError, match=f"^{name} version 2 is already champion$"):
        promote(registry_client, home, shared_store, name, "2", "by hand", CONTEXT, "cli")
    assert history(shared_store, name) == []


@pytest.mark.parametrize("source, thresholds, says", [
    ("loads", {"val_accuracy": 0.99}, "{name} version 2 is below the thresholds: val_accuracy 0.1"),
    ("loads", {"val_loss": 0.0, "val_accuracy": 0.99, "val_f1": 0.5},  # one not reported by the recipe is not met
     "{name} version 2 is below the thresholds: val_accuracy 0.1"),
    ("broken", {"val_accuracy": 0.0}, "{name} version 2 fails to load ("),
])
def test_promote_by_hand_applies_the_models_thresholds_and_load_check(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult], source: str, thresholds: dict[str, float], says: str) -> None:
    weak = trained["weak"]
    _version(registry_client, name, sources["loads"], weak)
    _set(registry_client, name, champion="1")
    registry_client.set_registered_model_tag(name, "shipyard.gate.min_metrics", json.dumps(thresholds))
    _version(registry_client, name, sources[source], weak)
    with pytest.raises(RegistryError) as failed:
        promote(registry_client, home, shared_store, name, "2", "by hand", CONTEXT, "cli")
    assert str(failed.value).startswith(says.format(name=name)) and str(failed.value).endswith("; not promoted")
    if "val_f1" in thresholds:  # every threshold missed is named
        assert str(failed.value).endswith(" < minimum 0.99; val_f1 nan < minimum 0.5; not promoted")
    assert _aliases(registry_client, name) == {"champion": "1"} and history(shared_store, name) == []


def test_mlflow_failing_during_a_promotion_by_hand_fails_with_the_uri_and_moves_nothing(
        registry_client: MlflowClient, name: str, sources: dict[str, str], shared_store: Store, home: Settings,
        trained: dict[str, TrainResult], registry_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _version(registry_client, name, sources["loads"], trained["weak"])
    reads = 0
    real = registry_client.get_model_version

    def fails_after_the_check(*args: Any) -> Any:  # the input check passes, then MLflow goes away
        nonlocal reads
        reads += 1
        if reads > 1:
            raise MlflowException("503 Service Unavailable")
        return real(*args)

    monkeypatch.setattr(registry_client, "get_model_version", fails_after_the_check)
    with pytest.raises(RegistryError, match=f"^MLflow at {registry_uri} \\({SETTING}\\) failed: 503"):
        promote(registry_client, home, shared_store, name, "1", "by hand", CONTEXT, "cli")
    assert _aliases(registry_client, name) == {} and history(shared_store, name) == []
