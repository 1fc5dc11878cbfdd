"""A resumed run restores everything a recipe checkpointed: interrupted + resumed equals uninterrupted."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shipyard.datasets.demo import write_demo_source
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem
from shipyard.training import TrainResult, train
from shipyard.training.checkpoint import latest
from shipyard.training.trainer import checkpoint_prefix
from tests.training_recipes import Curriculum, Evicted, evicting

REF = DatasetRef(name="digits", version="0123456789abcdef")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_source(tmp_path_factory.mktemp("source") / "digits")


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    with evicting(Curriculum):
        yield


def _weights(store: Store, result: TrainResult) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(store.read_bytes(*result.model_parts())), weights_only=True)  # type: ignore[no-any-return]


def test_a_resumed_run_restores_the_recipes_state_and_ends_with_the_uninterrupted_weights(
        digits: Path, tmp_path: Path, sigterm_raises: None) -> None:
    params = TrainParams(entrypoint="tests.training_recipes:curriculum_sigterm", epochs=3, hidden_units=32)
    store = filesystem(Settings(store_uri=str(tmp_path / "store")))
    with pytest.raises(Evicted):
        train(store, REF, params, digits)
    resumed = train(store, REF, params, digits)
    assert resumed.resumed_from_step == 31  # mid-epoch 2, inside the 40 smoothed steps

    clean = filesystem(Settings(store_uri=str(tmp_path / "clean")))
    other = params.model_copy(update={"entrypoint": "tests.training_recipes:curriculum"})  # same math, no signal
    uninterrupted = train(clean, REF, other, digits)

    for run, where in ((resumed, store), (uninterrupted, clean)):
        newest = latest(where, checkpoint_prefix(run.key))
        assert newest is not None and newest.state["recipe_state"] == {"seen": 3 * 23}
    a, b = _weights(store, resumed), _weights(clean, uninterrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[-1].metrics == uninterrupted.history[-1].metrics
