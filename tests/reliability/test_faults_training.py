"""Guarantee 1, training half: checkpoints and results survive a faulty S3, or fail cleanly publishing nothing.

The fault proxy (tests/faultproxy.py) sits between the trainer and the S3 server. At a 10% fault rate
(connection resets, 500, 503 SlowDown, added latency) on every request, a run that is evicted and resumed
ends with the same bytes as a run on a healthy store. At 100% the run fails with one line naming the store
and publishes nothing: no checkpoint sidecar, no weights, no result.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shipyard.datasets.demo import write_demo_source
from shipyard.errors import StoreError
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.settings import Settings, load_settings
from shipyard.storage import Store, filesystem
from shipyard.training import TrainResult, cached_result, train, training_key
from shipyard.training.checkpoint import latest
from shipyard.training.trainer import checkpoint_prefix
from tests.faultproxy import FaultProxy
from tests.stack import S3
from tests.training_recipes import Curriculum, Evicted, evicting

# Evicted by SIGTERM in step 30 and resumed; a checkpoint after every step, so the faults meet many writes.
EVICTED = TrainParams(entrypoint="tests.training_recipes:curriculum_sigterm", epochs=3, hidden_units=16,
                      checkpoint_every_steps=1)
STRAIGHT = EVICTED.model_copy(update={"entrypoint": "tests.training_recipes:curriculum"})

REF = DatasetRef(name="digits", version="0123456789abcdef")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_source(tmp_path_factory.mktemp("source") / "digits")


@pytest.fixture
def fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """One attempt per S3 request: a store that always fails fails in seconds, not minutes (the default is 8)."""
    monkeypatch.setenv("SHIPYARD_STORE_MAX_ATTEMPTS", "1")


@pytest.fixture
def sigterm_raises() -> Iterator[None]:
    with evicting(Curriculum):
        yield


def _through(proxy: FaultProxy) -> Store:
    return filesystem(load_settings(), endpoint_url=proxy.url)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _comparable(result: TrainResult | None) -> dict[str, object]:
    """The result without its wall-clock fields and the store it names; the rest must be equal."""
    assert result is not None
    data = json.loads(result.model_dump_json())
    for entry in data["history"]:
        entry.pop("seconds")
    for field in ("samples_per_second", "rank_samples_per_second", "model_url"):
        data.pop(field)
    return data


def _checkpoint_weights(store: Store, key: str) -> dict[int, str]:
    """Hash each checkpoint's model weights by step (its own checksum checked on the way)."""
    prefix = checkpoint_prefix(key)
    out = {}
    for sidecar in (n for n in store.list(*prefix) if n.endswith(".json")):
        meta = json.loads(store.read_bytes(*prefix, sidecar))
        data = store.read_bytes(*prefix, sidecar.replace(".json", ".pt"))
        assert _sha(data) == meta["sha256"] and len(data) == meta["size"], sidecar
        state = torch.load(io.BytesIO(data), weights_only=False)
        out[meta["step"]] = _sha(b"".join(t.numpy().tobytes() for t in state["model"].values()))
    return out


@pytest.mark.drill
def test_at_a_10_percent_fault_rate_checkpoints_and_results_are_byte_identical(
        s3: S3, digits: Path, sigterm_raises: None) -> None:
    healthy = filesystem(Settings(store_uri=f"s3://{s3.bucket}/healthy"))  # the same run without faults
    with pytest.raises(Evicted):
        train(healthy, REF, EVICTED, digits)
    Curriculum.armed = True
    baseline = train(healthy, REF, EVICTED, digits)

    with FaultProxy(s3.endpoint) as proxy:
        proxy.randomly(0.10, seed=13)
        store = _through(proxy)
        with pytest.raises(Evicted):
            train(store, REF, EVICTED, digits)
        resumed = train(store, REF, EVICTED, digits)  # reads the checkpoints back through the faults
        faults = proxy.injected
        requests = len(proxy.events)
    print(f"\n{faults} faults injected in {requests} requests")
    assert faults >= 10  # about 10% of the requests; the figure goes in docs/reliability.md
    assert resumed.resumed_from_step == 31

    direct = filesystem(load_settings())  # read back without the proxy
    assert _sha(direct.read_bytes(*resumed.model_parts())) == _sha(healthy.read_bytes(*baseline.model_parts()))
    assert _comparable(cached_result(direct, resumed.key)) == _comparable(cached_result(healthy, baseline.key))
    ours, theirs = _checkpoint_weights(direct, resumed.key), _checkpoint_weights(healthy, baseline.key)
    assert ours == theirs and sorted(ours) == list(range(1, 70))  # a checkpoint after every step, none lost
    found = latest(direct, checkpoint_prefix(resumed.key))
    assert found is not None and found.state["recipe_state"] == {"seen": 69}


@pytest.mark.drill
def test_at_a_100_percent_fault_rate_training_fails_in_one_line_and_publishes_nothing(
        s3: S3, digits: Path, fail_fast: None) -> None:
    with FaultProxy(s3.endpoint) as proxy:
        proxy.randomly(1.0, faults=("503-slowdown", "500", "reset"), seed=13)
        with pytest.raises(StoreError) as caught:
            train(_through(proxy), REF, STRAIGHT, digits)
    message = str(caught.value)
    print(f"\n{message}")
    assert "\n" not in message and "s3://shipyard-test/store" in message and "SHIPYARD_STORE_URI" in message
    assert "at s3://shipyard-test/store/training/" in message and "[Errno" not in message
    assert s3.keys() == []


@pytest.mark.drill
def test_when_every_write_fails_no_checkpoint_weights_or_result_is_published(
        s3: S3, digits: Path, fail_fast: None) -> None:
    with FaultProxy(s3.endpoint) as proxy:
        for method in ("PUT", "POST"):  # reads pass: training runs until its first checkpoint
            proxy.inject("503-slowdown", method, times=10_000)
        with pytest.raises(StoreError) as caught:
            train(_through(proxy), REF, STRAIGHT, digits)
    message = str(caught.value)
    print(f"\n{message}")
    assert "\n" not in message and "reduce your request rate" in message
    assert "at s3://shipyard-test/store/training/" in message  # names the object it could not write
    assert s3.keys() == []
    key = training_key(REF, STRAIGHT)
    assert latest(filesystem(load_settings()), checkpoint_prefix(key)) is None
