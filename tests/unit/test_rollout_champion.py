"""The champion/live-version decisions of a rollout (`shipyard.rollout.champion`), fast.

A real MLflow registry (SQLite, in this process) and a real store (local directory); the target is an
in-memory one implementing the `RolloutTarget` interface, so each decision is checked in milliseconds. The
same decisions against the real inference server are in tests/integration/test_serving_rollout.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from shipyard.errors import RegistryError
from shipyard.registry.aliases import alias_lease, history
from shipyard.registry.lineage import RunContext
from shipyard.rollout.base import Live, ModelRef, RolloutResult
from shipyard.rollout.champion import (
    already_serving,
    champion_version,
    choose_champion,
    restore_champion,
    serve_champion,
    set_champion,
)
from shipyard.storage import Store


class MemoryTarget:
    """Serves one version at a time, in memory; records each rollout (model, example, start, end)."""

    name = "memory"

    def __init__(self, name: str, serving: str | None = None, delay: float = 0.0) -> None:
        self.serving = ModelRef(model_name=name, version=serving) if serving else None
        self.delay = delay
        self.rollouts: list[tuple[ModelRef, list[list[float]] | None, float, float]] = []

    def live(self) -> Live | None:
        return None if self.serving is None else Live(target=self.name, model=self.serving, endpoint="http://x")

    def roll_out(self, model: ModelRef, example: list[list[float]] | None) -> RolloutResult:
        started = time.monotonic()
        time.sleep(self.delay)
        previous, self.serving = self.serving, model
        self.rollouts.append((model, example, started, time.monotonic()))
        return RolloutResult(
            target=self.name, model=model, previous=previous, endpoint="http://x", reused=False, predictions=[[1.0]]
        )


@pytest.fixture(scope="module")
def registry_client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """One SQLite registry for the module (creating its schema takes seconds); each test has its own model."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def name(registry_client: MlflowClient, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registered model of this test's own, with versions 1, 2 and 3."""
    model = "m-" + request.node.name[:40].replace("_", "-")
    registry_client.create_registered_model(model)
    for _ in range(3):
        registry_client.create_model_version(model, source=(tmp_path / "model").as_uri())
    return model


@pytest.fixture
def client(registry_client: MlflowClient, name: str) -> MlflowClient:
    return registry_client


def _turns_taken(store: Store, name: str) -> list[str]:
    return store.list("registry", name, "rollout")


EXAMPLE = [[0.5, 0.25]]


def test_a_rerun_whose_champion_already_serves_moves_nothing_and_takes_no_turn(
    name: str, client: MlflowClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    set_champion(client, ModelRef(model_name=name, version="2"))
    target = MemoryTarget(name, serving="2")
    with caplog.at_level(logging.INFO, logger="shipyard.rollout.champion"):
        result = serve_champion(client, store, target, ModelRef(model_name=name, version="2"), EXAMPLE)
    assert result == RolloutResult(
        target="memory",
        model=ModelRef(model_name=name, version="2"),
        previous=ModelRef(model_name=name, version="2"),
        endpoint="http://x",
        reused=True,
        predictions=None,
    )
    assert target.rollouts == [] and _turns_taken(store, name) == []
    assert f"{name} version 2 already serves at http://x" in caplog.messages


def test_the_champion_is_rolled_out_with_the_example_when_something_else_serves(
    name: str, client: MlflowClient, store: Store
) -> None:
    set_champion(client, ModelRef(model_name=name, version="2"))
    target = MemoryTarget(name, serving="1")
    result = serve_champion(client, store, target, ModelRef(model_name=name, version="2"), EXAMPLE)
    assert [(m, e) for m, e, *_ in target.rollouts] == [(ModelRef(model_name=name, version="2"), EXAMPLE)]
    assert (
        result.model == ModelRef(model_name=name, version="2")
        and result.previous == ModelRef(model_name=name, version="1")
        and not result.reused
    )
    # The turn was taken in the store, saying what for (`shipyard` messages name the holder's purpose), and ended.
    assert sorted(_turns_taken(store, name)) == ["1.done", "1.lease"]
    assert json.loads(store.read_bytes("registry", name, "rollout", "1.lease"))["purpose"] == (
        f"roll out models:/{name}/2"
    )


def test_a_first_rollout_serves_the_version_when_nothing_serves_and_no_champion_exists(
    name: str, client: MlflowClient, store: Store
) -> None:
    target = MemoryTarget(name)
    result = serve_champion(client, store, target, ModelRef(model_name=name, version="1"), EXAMPLE)
    assert [(m, e) for m, e, *_ in target.rollouts] == [
        (ModelRef(model_name=name, version="1"), EXAMPLE)
    ] and result.previous is None


def test_a_champion_moved_by_another_pipeline_is_served_instead_without_this_versions_example(
    name: str, client: MlflowClient, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    set_champion(
        client, ModelRef(model_name=name, version="3")
    )  # this pipeline promoted 2, another one then promoted 3
    target = MemoryTarget(name, serving="2")  # even though 2 serves already, it is not champion any more
    with caplog.at_level(logging.INFO, logger="shipyard.rollout.champion"):
        result = serve_champion(client, store, target, ModelRef(model_name=name, version="2"), EXAMPLE)
    assert [(m, e) for m, e, *_ in target.rollouts] == [(ModelRef(model_name=name, version="3"), None)]
    assert result.model == ModelRef(model_name=name, version="3")
    assert f"champion of {name} moved to version 3 since version 2 was promoted; serving version 3" in caplog.messages


def test_rollouts_of_one_model_take_turns(name: str, client: MlflowClient, store: Store) -> None:
    set_champion(client, ModelRef(model_name=name, version="2"))
    target = MemoryTarget(name, delay=0.6)
    target.live = lambda: None  # type: ignore[method-assign]  # never "already serving": both must roll out
    threads = [
        threading.Thread(
            target=serve_champion, args=(client, store, target, ModelRef(model_name=name, version="2"), EXAMPLE)
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    (_, _, _, first_end), (_, _, second_start, _) = sorted(target.rollouts, key=lambda r: r[2])
    assert second_start >= first_end  # the second waited for the first to end, never overlapping it


def test_a_rollout_longer_than_the_turns_ttl_keeps_its_turn_by_beating(
    name: str, client: MlflowClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipyard.rollout import champion

    monkeypatch.setattr(champion, "ROLLOUT_TTL", 1.0)  # a turn not renewed for 1 s is taken for abandoned
    monkeypatch.setattr(champion, "ROLLOUT_HEARTBEAT", 0.2)
    set_champion(client, ModelRef(model_name=name, version="2"))
    target = MemoryTarget(name, delay=2.5)  # each rollout outlives the TTL
    target.live = lambda: None  # type: ignore[method-assign]  # never "already serving": both must roll out
    model = ModelRef(model_name=name, version="2")
    threads = [threading.Thread(target=serve_champion, args=(client, store, target, model, EXAMPLE)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    (_, _, _, first_end), (_, _, second_start, _) = sorted(target.rollouts, key=lambda r: r[2])
    assert second_start >= first_end


def test_already_serving_answers_only_for_the_champion_that_serves(name: str, client: MlflowClient) -> None:
    set_champion(client, ModelRef(model_name=name, version="2"))
    assert already_serving(client, MemoryTarget(name), ModelRef(model_name=name, version="2")) is None  # nothing serves
    assert (
        already_serving(client, MemoryTarget(name, serving="1"), ModelRef(model_name=name, version="2")) is None
    )  # another version serves
    assert (
        already_serving(client, MemoryTarget(name, serving="1"), ModelRef(model_name=name, version="1")) is None
    )  # serves, but not champion
    other = MemoryTarget(name)
    other.serving = ModelRef(model_name="other", version="2")
    assert already_serving(client, other, ModelRef(model_name=name, version="2")) is None  # another model's version 2
    found = already_serving(client, MemoryTarget(name, serving="2"), ModelRef(model_name=name, version="2"))
    assert (
        found is not None
        and found.reused
        and found.previous == ModelRef(model_name=name, version="2")
        and found.endpoint == "http://x"
    )


def test_champion_version_is_none_only_when_the_model_or_alias_is_absent(name: str, client: MlflowClient) -> None:
    assert champion_version(client, name) is None  # no alias yet
    assert champion_version(client, "no-such-model") is None
    set_champion(client, ModelRef(model_name=name, version="3"))
    assert champion_version(client, name) == "3"


def test_champion_version_says_why_when_the_registry_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")
    with pytest.raises(RegistryError, match=r"^cannot read the champion alias of digits: "):
        champion_version(down, "digits")


def test_set_champion_refuses_a_version_that_does_not_exist(
    name: str, client: MlflowClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="shipyard.rollout.champion"):
        set_champion(client, ModelRef(model_name=name, version="1"))
    assert caplog.messages == [f"champion of {name} is now version 1"]
    with pytest.raises(RegistryError, match=rf"^cannot make models:/{name}/9 the champion: "):
        set_champion(client, ModelRef(model_name=name, version="9"))
    assert champion_version(client, name) == "1"  # unchanged


def test_restore_champion_puts_the_alias_back_or_removes_it(
    name: str, client: MlflowClient, caplog: pytest.LogCaptureFixture
) -> None:
    set_champion(client, ModelRef(model_name=name, version="3"))
    with caplog.at_level(logging.WARNING, logger="shipyard.rollout.champion"):
        restore_champion(client, name, "3")  # not moved: nothing to do, nothing said
        assert caplog.messages == []
        restore_champion(client, name, "1")
        assert champion_version(client, name) == "1"
        assert caplog.messages == [f"champion of {name} restored to version 1"]
        restore_champion(client, name, None)  # there was no champion before
    assert champion_version(client, name) is None
    assert caplog.messages[-1] == f"champion of {name} restored to version none"


def test_restore_champion_says_why_it_could_not(name: str, client: MlflowClient) -> None:
    set_champion(client, ModelRef(model_name=name, version="1"))
    with pytest.raises(RegistryError, match=f"^cannot restore the champion alias of {name}: "):
        restore_champion(client, name, "9")  # no such version
    assert champion_version(client, name) == "1"


def test_a_failed_rollout_puts_back_only_the_champion_it_moved_never_a_later_promotion(
    name: str, client: MlflowClient, caplog: pytest.LogCaptureFixture
) -> None:
    # This pipeline held 1 and promoted 2; another pipeline promoted 3 before this one's rollout of 2 failed.
    set_champion(client, ModelRef(model_name=name, version="3"))
    with caplog.at_level(logging.WARNING, logger="shipyard.rollout.champion"):
        restore_champion(client, name, "1", moved_to="2")
    assert champion_version(client, name) == "3"
    assert caplog.messages == [f"champion of {name} left on version 3: another pipeline moved it there after version 2"]
    # Another pipeline's rollback removed it meanwhile: left removed, and said so.
    client.delete_registered_model_alias(name, "champion")
    with caplog.at_level(logging.WARNING, logger="shipyard.rollout.champion"):
        restore_champion(client, name, "1", moved_to="2")
    assert champion_version(client, name) is None
    assert caplog.messages[-1] == f"champion of {name} left on version none: another pipeline moved it there after " \
                                  "version 2"
    # Nobody moved it since: this pipeline's own promotion goes back.
    set_champion(client, ModelRef(model_name=name, version="2"))
    restore_champion(client, name, "1", moved_to="2")
    assert champion_version(client, name) == "1"


def _moves(store: Store, name: str) -> list[tuple[str | None, str | None, str, str, str | None]]:
    return [(m.replaced, m.version, m.actor, m.reason, m.flow_run_id) for m in history(store, name)]


def test_a_champion_chosen_by_hand_waits_for_the_alias_lease_and_is_recorded(
    name: str, client: MlflowClient, store: Store
) -> None:
    # `shipyard rollout to` moves the alias as the gate does: never while a gate or a rollback holds the lease.
    context = RunContext(flow_run_id="run-7", flow_run_url="http://ui/run-7")
    chosen = threading.Thread(target=choose_champion, args=(client, store, ModelRef(model_name=name, version="2"),
                                                            "rolled out by hand: version 2", context, "rollout"))
    with alias_lease(store, name, purpose="a gate"):
        chosen.start()
        time.sleep(1.0)
        assert champion_version(client, name) is None  # still waiting for the lease
    chosen.join(timeout=30)
    assert champion_version(client, name) == "2"
    assert _moves(store, name) == [(None, "2", "rollout", "rolled out by hand: version 2", "run-7")]
    leases = store.list("registry", name, "aliases")
    assert json.loads(store.read_bytes("registry", name, "aliases", "2.lease"))["purpose"] == (
        "rollout: rolled out by hand: version 2"), leases

    choose_champion(client, store, ModelRef(model_name=name, version="2"), "again", context, "rollout")
    assert len(_moves(store, name)) == 1  # already champion: nothing moved, nothing recorded


def test_a_champion_chosen_by_hand_that_does_not_exist_writes_nothing(
    name: str, client: MlflowClient, store: Store
) -> None:
    with pytest.raises(RegistryError, match=rf"^cannot make models:/{name}/9 the champion: "):
        choose_champion(client, store, ModelRef(model_name=name, version="9"), "by hand", RunContext(), "rollout")
    assert champion_version(client, name) is None
    assert store.list("registry", name, "aliases") == [] and history(store, name) == []


def test_a_restore_with_a_history_is_recorded_as_a_rollback_and_one_left_alone_is_not(
    name: str, client: MlflowClient, store: Store
) -> None:
    set_champion(client, ModelRef(model_name=name, version="2"))
    context = RunContext(flow_run_id="run-8")
    restore_champion(client, name, "2", moved_to="2", history=(store, context))  # not moved: nothing to record
    restore_champion(client, name, "1", moved_to="3", history=(store, context))  # another pipeline's: left
    assert history(store, name) == []
    restore_champion(client, name, "1", moved_to="2", history=(store, context))
    assert champion_version(client, name) == "1"
    assert _moves(store, name) == [("2", "1", "rollback", "a failed rollout of version 2 rolled back", "run-8")]
