"""Checkpoints in the store and a loop resumed from one, without training: what a preempted run relies on."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.params import TrainParams
from shipyard.storage import Store
from shipyard.training import checkpoint
from shipyard.training.digits import DigitsRecipe
from shipyard.training.distributed import World
from shipyard.training.loop import EpochMetrics, Loop

PREFIX = ("training", "0123456789abcdef", "checkpoints")
CPU = World(rank=0, size=1, device=torch.device("cpu"))
PARAMS = TrainParams(epochs=3, hidden_units=8)


def _state(marker: float) -> dict[str, object]:
    return {"model": {"w": torch.full((3,), marker)}, "numpy": np.random.get_state(), "note": f"at {marker}"}


def test_a_checkpoint_round_trips_and_its_sidecar_records_step_checksum_size_and_reason(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shipyard.training.checkpoint"):
        url = checkpoint.save(store, PREFIX, 2, 20, _state(1.5), reason="epoch")
    assert url == store.url(*PREFIX, "step-0000000020.pt")
    assert store.list(*PREFIX) == ["step-0000000020.json", "step-0000000020.pt"]
    data = store.read_bytes(*PREFIX, "step-0000000020.pt")
    assert json.loads(store.read_bytes(*PREFIX, "step-0000000020.json")) == {
        "epoch": 2, "step": 20, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "reason": "epoch"}
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"checkpoint (epoch) epoch=2 step=20 written to {url}")]

    found = checkpoint.latest(store, PREFIX)
    assert found is not None and (found.epoch, found.step) == (2, 20)
    assert sorted(found.state) == ["model", "note", "numpy"] and found.state["note"] == "at 1.5"
    assert torch.equal(found.state["model"]["w"], torch.full((3,), 1.5))
    assert all(np.array_equal(a, b) for a, b in zip(found.state["numpy"], np.random.get_state(), strict=True))


def test_a_checkpoint_without_a_reason_says_scheduled(store: Store) -> None:
    checkpoint.save(store, PREFIX, 0, 7, _state(0.0))
    assert json.loads(store.read_bytes(*PREFIX, "step-0000000007.json"))["reason"] == "scheduled"


def test_the_highest_step_wins_whatever_order_the_checkpoints_were_written_in(store: Store) -> None:
    for epoch, step in ((3, 100), (0, 9), (1, 10)):
        checkpoint.save(store, PREFIX, epoch, step, _state(float(step)))
    found = checkpoint.latest(store, PREFIX)
    assert found is not None and (found.epoch, found.step) == (3, 100)
    assert torch.equal(found.state["model"]["w"], torch.full((3,), 100.0))


def test_nothing_to_resume_from_an_empty_prefix_or_an_unpublished_checkpoint(store: Store) -> None:
    assert checkpoint.latest(store, PREFIX) is None
    checkpoint.save(store, PREFIX, 1, 10, _state(10.0))
    store.write_bytes(b"a .pt whose sidecar was never written", *PREFIX, "step-0000000020.pt")
    found = checkpoint.latest(store, PREFIX)
    assert found is not None and found.step == 10


def test_corrupt_and_unreadable_checkpoints_are_skipped_for_the_newest_good_one_with_a_warning_each(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    for step in (10, 20, 30, 40):
        checkpoint.save(store, PREFIX, step // 10, step, _state(float(step)))
    store.write_bytes(b"not json", *PREFIX, "step-0000000040.json")
    store.write_bytes(store.read_bytes(*PREFIX, "step-0000000030.pt") + b"!", *PREFIX, "step-0000000030.pt")
    (Path(store.path(*PREFIX)) / "step-0000000020.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="shipyard.training.checkpoint"):
        found = checkpoint.latest(store, PREFIX)
    assert found is not None and (found.epoch, found.step) == (1, 10)
    assert torch.equal(found.state["model"]["w"], torch.full((3,), 10.0))
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [m[1].split(" (")[0] for m in messages] == ["checkpoint step-0000000040 unreadable",
                                                       "checkpoint step-0000000030 is corrupt",
                                                       "checkpoint step-0000000020 unreadable"]
    assert all(level == logging.WARNING and text.endswith("; trying the previous one") for level, text in messages)
    assert "(checksum mismatch)" in messages[1][1] and "not found in the store" in messages[2][1]

    store.write_bytes(b"", *PREFIX, "step-0000000010.pt")  # no good checkpoint left
    assert checkpoint.latest(store, PREFIX) is None


def _loop(store: Store, digits: Path) -> Loop:
    return Loop(store, PREFIX, PARAMS, DigitsRecipe(PARAMS), digits, CPU)


def _advance(loop: Loop) -> None:
    """Move every part of the loop's state away from a fresh loop's, as training would."""
    with torch.no_grad():
        for p in loop.model.parameters():
            p.add_(0.25)
            p.grad = torch.ones_like(p)
    loop.optimizer.step()
    loop.scheduler.step()
    loop.history = [EpochMetrics(epoch=1, step=7, train_loss=0.5, metrics={"val_loss": 0.4}, seconds=1.0, samples=9)]
    loop.ctx.state = {"seen": 7}
    loop.epoch, loop.step = 1, 7
    _draws()


def _draws() -> tuple[torch.Tensor, np.ndarray, float]:
    return torch.rand(3), np.random.rand(3), random.random()


def test_a_resumed_loop_continues_with_the_saved_weights_optimiser_schedule_history_state_and_random_streams(
        store: Store, digits: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = _loop(store, digits)
    _advance(before)
    before.save("preempted")
    expected = _draws()

    after = _loop(store, digits)
    with caplog.at_level(logging.INFO, logger="shipyard.training.loop"):
        after.resume()
    drawn = _draws()
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1]) and drawn[2] == expected[2]
    a, b = before.model.state_dict(), after.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert after.optimizer.state_dict()["state"][0]["step"] == before.optimizer.state_dict()["state"][0]["step"] == 1
    assert torch.equal(after.optimizer.state_dict()["state"][0]["exp_avg"],
                       before.optimizer.state_dict()["state"][0]["exp_avg"])
    assert after.scheduler.state_dict() == before.scheduler.state_dict()
    assert after.optimizer.param_groups[0]["lr"] == before.optimizer.param_groups[0]["lr"] < PARAMS.learning_rate
    assert after.history == before.history and after.ctx.state == {"seen": 7}
    assert (after.epoch, after.step, after.resumed_from, after.ctx.epoch, after.ctx.step) == (1, 7, 7, 1, 7)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"resuming from checkpoint at epoch 1, step 7 in {store.url(*PREFIX)}")]


def test_a_checkpoint_without_recipe_state_resumes_with_an_empty_one_the_recipe_can_fill(
        store: Store, digits: Path) -> None:
    before = _loop(store, digits)
    _advance(before)
    state = before.state()
    del state["recipe_state"]  # as written before recipes had state of their own
    checkpoint.save(store, PREFIX, before.epoch, before.step, state)

    after = _loop(store, digits)
    after.ctx.state = {"left": "over"}
    after.resume()
    assert after.ctx.state == {} and after.step == 7
    after.ctx.state["seen"] = 1  # what a recipe does on its first step
    assert after.state()["recipe_state"] == {"seen": 1}


def test_without_a_checkpoint_a_loop_starts_from_scratch(store: Store, digits: Path) -> None:
    loop = _loop(store, digits)
    fresh = {k: v.clone() for k, v in loop.model.state_dict().items()}
    loop.resume()
    assert (loop.epoch, loop.step, loop.resumed_from, loop.history, loop.ctx.state) == (0, 0, None, [], {})
    assert all(torch.equal(fresh[k], v) for k, v in loop.model.state_dict().items())
