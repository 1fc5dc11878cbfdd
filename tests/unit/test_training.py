"""The trainer: bad params fail before training, user recipes plug in, preemption resumes exactly."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from shipyard.errors import TrainingError
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem
from shipyard.training import load_model, train, training_key
from shipyard.training.checkpoint import latest
from shipyard.training.curves import curves_png
from shipyard.training.distributed import processes_for, torchrun_command
from shipyard.training.trainer import checkpoint_prefix
from tests.training_recipes import Evicted, SigtermAtStep, evicting

REF = DatasetRef(name="digits", version="0123456789abcdef")

FAST = {"epochs": 2, "hidden_units": 16}


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    with evicting(SigtermAtStep):
        yield


def _weights(store: Store, params: TrainParams) -> dict[str, torch.Tensor]:
    data = store.read_bytes("training", training_key(REF, params), "model.pt")
    return torch.load(io.BytesIO(data), weights_only=True)  # type: ignore[no-any-return]


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("field, value", [("learning_rate", 0), ("learning_rate", -1e-3), ("epochs", 0),
                                          ("epochs", -2), ("batch_size", 0)])
def test_non_positive_params_are_rejected_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as caught:
        TrainParams(**{field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_batch_larger_than_the_dataset_fails_before_training(digits: Path, store: Store) -> None:
    with pytest.raises(TrainingError) as caught:
        train(store, REF, TrainParams(batch_size=5000, **FAST), digits)
    assert str(caught.value) == ("batch_size 5000 is larger than the training split (1438 rows); lower batch_size")
    assert store.list("training") == []  # nothing was trained or checkpointed


@pytest.mark.parametrize("entrypoint, message", [
    ("no_such_pkg.models:recipe", "entrypoint 'no_such_pkg.models:recipe': cannot import module 'no_such_pkg.models'"),
    ("shipyard.training.digits:nope", "entrypoint 'shipyard.training.digits:nope': module 'shipyard.training.digits' "
                                      "has no function 'nope'"),
    ("tests.training_recipes:not_a_recipe", "entrypoint 'tests.training_recipes:not_a_recipe' returned a NotARecipe "
                                            "without datasets, evaluate, input_example, serving_model, training_step"),
])
def test_a_bad_entrypoint_fails_before_training_with_one_line(digits: Path, store: Store, entrypoint: str,
                                                               message: str) -> None:
    with pytest.raises(TrainingError) as caught:
        train(store, REF, TrainParams(entrypoint=entrypoint, **FAST), digits)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert store.list("training") == []


def test_a_malformed_entrypoint_is_rejected_by_the_params() -> None:
    with pytest.raises(ValidationError, match=r"must look like 'package\.module:function'"):
        TrainParams(entrypoint="my_models.py")


def test_a_user_recipe_trains_logs_its_own_metric_and_keeps_its_state_across_checkpoints(
        digits: Path, store: Store) -> None:
    params = TrainParams(entrypoint="tests.training_recipes:counting", epochs=3)
    result = train(store, REF, params, digits)
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert set(result.metrics) == {"train_accuracy", "val_loss", "val_accuracy"}
    assert result.history[-1].metrics["train_accuracy"] > result.history[0].metrics["train_accuracy"]
    newest = latest(store, checkpoint_prefix(result.key))
    assert newest is not None and newest.state["recipe_state"] == {"steps_seen": 3 * 23}
    model = load_model(store, result)
    assert isinstance(model[0], torch.nn.Linear)


def test_sigterm_checkpoints_and_the_resumed_run_equals_an_uninterrupted_one(
        digits: Path, store: Store, tmp_path: Path, sigterm_raises: None) -> None:
    params = TrainParams(entrypoint="tests.training_recipes:sigterm_at_step", epochs=3, hidden_units=32)
    with pytest.raises(Evicted):
        train(store, REF, params, digits)
    key = training_key(REF, params)
    sidecars = sorted(store.list(*checkpoint_prefix(key)))
    newest = json.loads(store.read_bytes(*checkpoint_prefix(key), [s for s in sidecars if s.endswith(".json")][-1]))
    assert (newest["reason"], newest["epoch"], newest["step"]) == ("preempted", 1, 31)
    assert not store.exists("training", key, "result.json")

    resumed = train(store, REF, params, digits)
    assert resumed.resumed_from_step == 31
    assert [h.epoch for h in resumed.history] == [1, 2, 3] and resumed.history[-1].step == 3 * 23

    clean = filesystem(Settings(store_uri=str(tmp_path / "clean")))
    other = params.model_copy(update={"entrypoint": "tests.training_recipes:slow"})  # same math, no signal
    uninterrupted = train(clean, REF, other, digits)
    assert uninterrupted.resumed_from_step is None
    _assert_equal(_weights(store, params), _weights(clean, other))


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(
        digits: Path, store: Store, tmp_path: Path, sigterm_raises: None) -> None:
    params = TrainParams(entrypoint="tests.training_recipes:sigterm_at_step", epochs=2, hidden_units=32)
    with pytest.raises(Evicted):
        train(store, REF, params, digits)
    prefix = checkpoint_prefix(training_key(REF, params))
    newest = store.path(*prefix, "step-0000000031.pt")
    data = bytearray(Path(newest).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(newest).write_bytes(bytes(data))

    found = latest(store, prefix)
    assert found is not None and (found.epoch, found.step) == (1, 23)
    resumed = train(store, REF, params, digits)
    assert resumed.resumed_from_step == 23

    clean = filesystem(Settings(store_uri=str(tmp_path / "clean")))
    other = params.model_copy(update={"entrypoint": "tests.training_recipes:slow"})
    train(clean, REF, other, digits)
    _assert_equal(_weights(store, params), _weights(clean, other))


def test_checkpoints_every_n_steps_as_well_as_every_epoch(digits: Path, store: Store) -> None:
    params = TrainParams(checkpoint_every_steps=10, **FAST)
    result = train(store, REF, params, digits)
    names = [n for n in store.list(*checkpoint_prefix(result.key)) if n.endswith(".json")]
    assert names == [f"step-{s:010d}.json" for s in (10, 20, 23, 30, 40, 46)]


def test_loss_and_accuracy_curves_render_as_png(digits: Path, store: Store) -> None:
    result = train(store, REF, TrainParams(**FAST), digits)
    png = curves_png(result.history, title="digits")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000


@pytest.mark.parametrize("gpus, processes", [(0, 1), (1, 1), (2, 2), (8, 8)])
def test_several_visible_gpus_mean_one_torchrun_worker_each(gpus: int, processes: int) -> None:
    assert processes_for(gpus) == processes


def test_the_torchrun_command_runs_the_training_module_on_one_node(tmp_path: Path) -> None:
    command = torchrun_command(4, "digits", "abc123", tmp_path / "params.json", tmp_path / "data")
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert command[6:] == ["shipyard.training", "--dataset", "digits", "--version", "abc123",
                           "--params", str(tmp_path / "params.json"), "--data-dir", str(tmp_path / "data")]


def test_the_digits_example_is_scikit_learns_first_two_digits() -> None:
    from sklearn.datasets import load_digits

    from shipyard.training.digits import DigitsRecipe

    expected = (load_digits().data[:2] / 16.0).astype(np.float32)
    example = DigitsRecipe(TrainParams()).input_example()
    assert example.dtype == np.float32 and np.array_equal(example, expected)
