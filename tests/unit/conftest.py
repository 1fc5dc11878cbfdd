"""Fixtures the unit tests share: a store in the test's own directory, and the demo digits as a source."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.datasets.demo import write_demo_source
from shipyard.settings import Settings
from shipyard.storage import Store, filesystem


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A local store under the test's own directory."""
    return filesystem(Settings(store_uri=str(tmp_path / "store")))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled digits written once per module, as a source directory to stage or train on."""
    return write_demo_source(tmp_path_factory.mktemp("source") / "digits")
