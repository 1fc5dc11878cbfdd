"""The test suite's own shared servers: each session fixture has one definition, so each server starts once."""

from __future__ import annotations

import pytest

SHARED = ("s3_endpoint", "seaweedfs_endpoint", "mlflow_server", "prefect_api")


@pytest.mark.parametrize("name", SHARED)
def test_each_shared_server_fixture_is_defined_once(name: str, request: pytest.FixtureRequest) -> None:
    # A conftest that imports one of these defines it again: a second server of the same kind per session. For
    # Prefect that was a second test server whose settings took over the process, so tests handed the CLI one
    # server's URL and read the results from the other (404s, triggered runs that never came) whenever a
    # worker ran tests of both directories in an order the serial run never used.
    # pytest (pinned in pyproject.toml) has no public listing of every definition; this is its own one.
    definitions = [d for d in request._fixturemanager._get_all_fixture_defs() if d.argname == name]
    assert [(d.baseid, d.func.__module__) for d in definitions] == [("tests", "tests.stack")]
