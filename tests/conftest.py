"""Fixtures every test gets: an isolated environment, home directory and working directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# The servers integration and reliability tests share, registered here once (see tests/stack.py for why once).
from tests.stack import (  # noqa: F401
    inference_port,
    mlflow_server,
    mlflow_uri,
    model_name,
    prefect_api,
    pytest_generate_tests,
    s3,
    s3_backend,
    s3_endpoint,
    seaweedfs_endpoint,
)

# Servers the tests start inherit these: no telemetry calls (there is no internet here anyway), and no
# telemetry writes racing the Prefect test server's SQLite database at start-up ("database is locked").
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "true"

# Variables that would point a test at a developer's real services or credentials, or that an in-process CLI
# call set for the process (the temporary Prefect server's start timeout) and its subprocesses would inherit.
_LEAKY_PREFIXES = ("SHIPYARD_", "AWS_", "MLFLOW_", "PREFECT_API", "PREFECT_SERVER_EPHEMERAL", "KUBECONFIG")


# Directories of long tests, in the order xdist workers should take them.
_LONG_FIRST = ("tests/reliability/", "tests/integration/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On pytest-xdist workers, put the directories of long tests first (the order within each is kept).

    Workers take whole files in collection order as they come free (scripts/test turns off xdist's own reorder,
    which puts the files with the most tests first: the many quick unit files, then the long one-test drills
    last, one of which alone then made the run's tail). Long files first lets the quick ones fill the end.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: next((rank for rank, prefix in enumerate(_LONG_FIRST)
                                          if item.nodeid.startswith(prefix)), len(_LONG_FIRST)))



@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run each test in its own directory with a clean environment and a throwaway HOME."""
    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / ".shipyard"))
    monkeypatch.chdir(tmp_path)
    _forget_credentials()
    yield tmp_path
    _forget_credentials()


def _forget_credentials() -> None:
    """Drop the process's cached boto sessions: they keep the credentials of the environment they first met,
    and each test has its own (a real process has one environment for its life)."""
    from shipyard import storage

    storage._boto_session.cache_clear()
    storage._aio_session.cache_clear()
