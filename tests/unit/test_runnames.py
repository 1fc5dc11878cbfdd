"""Flow run names say what runs, whether the flow was called in-process (models) or by a deployment (dicts)."""

from __future__ import annotations

import pytest

from shipyard.cli import main
from shipyard.params import DatasetParams, TrainParams
from shipyard.runnames import pipeline_run_name, train_run_name
from tests.servers import free_port

VERSION = "a88ffecf20590816"


def test_train_run_name_shows_dataset_version_and_epochs() -> None:
    assert train_run_name({"dataset": "digits", "dataset_version": VERSION, "training": TrainParams()}) == \
        "train digits@a88ffecf e10"
    assert train_run_name({"dataset": "digits", "dataset_version": VERSION, "training": {"epochs": 3}}) == \
        "train digits@a88ffecf e3"
    # A dataset reference (name + version in one parameter) names the run the same way.
    assert train_run_name({"dataset": {"name": "digits", "version": VERSION}}) == "train digits@a88ffecf e10"


def test_pipeline_run_name_shows_the_version_when_given_else_the_source() -> None:
    assert pipeline_run_name({"dataset": DatasetParams(), "training": TrainParams(epochs=2)}) == \
        "pipeline digits from demo e2"
    assert pipeline_run_name({"dataset": {"name": "digits", "version": VERSION}}) == "pipeline digits@a88ffecf e10"


def test_schedule_without_a_prefect_server_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHIPYARD_PREFECT_PORT", str(free_port()))  # nothing listens there
    assert main(["schedule", "pause"]) == 1
    assert capsys.readouterr().err == ("shipyard: error: no Prefect server holds schedules: run 'shipyard up' or "
                                       "set SHIPYARD_PREFECT_API_URL\n")
