"""`shipyard schedule` shows, sets, pauses and resumes the local pipeline's schedule on a real Prefect server."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from deployments.apply import deploy_local
from shipyard.cli import main
from shipyard.settings import load_settings


def _schedule(name: str = "pipeline-flow/local") -> tuple[str, bool]:
    with get_client(sync_client=True) as client:
        (schedule,) = client.read_deployment_by_name(name).schedules
    return schedule.schedule.cron, schedule.active  # type: ignore[union-attr]


def test_schedule_commands_change_the_local_pipeline_schedule(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHIPYARD_PREFECT_API_URL", prefect_api)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)  # restored after the test; the CLI sets it too
    monkeypatch.setenv("SHIPYARD_LOCAL_PIPELINE_CRON", "15 1 * * *")
    settings = load_settings().model_copy(update={"local_work_pool": "schedule-test-local"})
    with get_client(sync_client=True) as client:  # the session's server may hold one from another test
        try:
            client.delete_deployment(client.read_deployment_by_name("pipeline-flow/local").id)
        except ObjectNotFound:
            pass
    deploy_local(settings)
    assert _schedule() == ("15 1 * * *", False)  # created paused, cron from the setting

    assert main(["schedule"]) == 0
    assert "pipeline-flow/local" in capsys.readouterr().out.split("cron '15 1 * * *' (UTC)  paused")[0]

    assert main(["schedule", "resume"]) == 0
    assert _schedule() == ("15 1 * * *", True)
    assert main(["schedule", "set", "30", "4", "*", "*", "*"]) == 0
    assert "pipeline-flow/local: cron '30 4 * * *' (UTC)  active" in capsys.readouterr().out
    assert _schedule() == ("30 4 * * *", True)

    deploy_local(settings)  # 'shipyard up' again keeps what the user chose
    assert _schedule() == ("30 4 * * *", True)
    assert main(["schedule", "pause", "-d", "pipeline-flow/local"]) == 0
    assert _schedule() == ("30 4 * * *", False)


def test_schedule_errors_are_one_line(prefect_api: str, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHIPYARD_PREFECT_API_URL", prefect_api)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    assert main(["schedule", "set", "61 * * * *"]) == 1
    assert capsys.readouterr().err.startswith("shipyard: error: cron '61 * * * *' is invalid")
    assert main(["schedule", "resume", "-d", "pipeline-flow/nowhere"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deployment 'pipeline-flow/nowhere' does not exist" in err
