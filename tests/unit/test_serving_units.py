"""Serving and rollout pieces without servers: batching, input checks, the smoke test, the token, the CLI."""

from __future__ import annotations

import asyncio
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from shipyard.cli import main
from shipyard.errors import ConfigError, ServingError
from shipyard.rollout import target
from shipyard.rollout.local import LocalTarget, serving_token
from shipyard.rollout.smoke import check_answers
from shipyard.serving.batching import Batcher
from shipyard.serving.model import BadInput, TensorPath
from shipyard.settings import Settings

ROWS = [[0.5] * 4]


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    passes: list[int] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        passes.append(batch.shape[0])
        return batch * 2

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(forward, ThreadPoolExecutor(1))
        inputs = [np.full((i + 1, 3), float(i), dtype=np.float32) for i in range(10)]
        return await asyncio.gather(*(batcher.predict(x) for x in inputs))

    answers = asyncio.run(scenario())
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, np.full((i + 1, 3), 2.0 * i))
    assert sum(passes) == 55 and len(passes) < 10  # 55 rows in fewer passes than requests


def test_a_model_that_drops_rows_fails_every_request_of_the_batch() -> None:
    async def scenario() -> list[object]:
        batcher = Batcher(lambda batch: batch[:1], ThreadPoolExecutor(1))
        inputs = [np.ones((2, 3), dtype=np.float32) for _ in range(4)]
        return await asyncio.gather(*(batcher.predict(x) for x in inputs), return_exceptions=True)

    answers = asyncio.run(scenario())
    assert any(isinstance(a, ValueError) and "rows" in str(a) for a in answers)


@pytest.mark.parametrize(("rows", "message"), [
    ([[1.0, 2.0]], r"shape \[1, 2\]; the model expects \[-1, 4\]"),
    ([[1.0] * 4, [1.0] * 3], "rectangular"),
    ([["a"] * 4], "rectangular"),
    ([], "shape"),
])
def test_tensor_inputs_are_checked_against_the_signature(rows: object, message: str) -> None:
    path = TensorPath(module=None, device="cpu", shape=(-1, 4), dtype=np.dtype("float32"))
    with pytest.raises(BadInput, match=message):
        path.check(rows)
    assert path.check(ROWS).dtype == np.float32


def test_the_smoke_test_rejects_wrong_rows_shapes_and_answers() -> None:
    expected = np.full((2, 10), 0.1)
    check_answers("models:/m/2", ROWS * 2, expected.tolist(), expected, expected.tolist())
    with pytest.raises(ServingError, match="1 predictions for 2 input rows"):
        check_answers("models:/m/2", ROWS * 2, [[0.1] * 10], expected, None)
    with pytest.raises(ServingError, match=r"shape \[2, 3\] where the live version answers \[2, 10\]"):
        check_answers("models:/m/2", ROWS * 2, [[0.3] * 3] * 2, np.full((2, 3), 0.3), expected.tolist())
    with pytest.raises(ServingError, match=r"differ from mlflow\.pyfunc\.load_model"):
        check_answers("models:/m/2", ROWS * 2, (expected + 0.01).tolist(), expected, None)


def test_the_swap_token_is_created_once_private_and_refused_when_readable(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    token = serving_token(settings)
    path = tmp_path / "home" / "serving-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 32
    assert serving_token(settings) == token
    assert serving_token(Settings(home=tmp_path / "home", serving_token="set")) == "set"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by other users; run: chmod 600"):
        serving_token(settings)


def test_the_target_comes_from_the_setting(tmp_path: Path) -> None:
    assert isinstance(target(Settings(home=tmp_path)), LocalTarget)


def test_rollout_status_and_undo_with_nothing_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path))
    assert main(["rollout", "status"]) == 0
    out = capsys.readouterr().out
    assert "target:           local" in out and "live:             nothing" in out
    assert main(["rollout", "undo"]) == 1
    assert "nothing to undo" in capsys.readouterr().err
