"""The CLI: bad input gets one line naming the culprit, a non-zero exit, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.cli import build_parser, main
from tests.servers import free_port


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *culprits: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("shipyard: error:")
    assert all(c in err for c in culprits), err


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / ".shipyard").exists()


@pytest.mark.parametrize(
    ("argv", "culprit"),
    [
        (["run", "--epochs", "0"], "training.epochs"),
        (["run", "--learning-rate", "-1"], "training.learning_rate"),
        (["run", "--source", "/no/such/dir"], "/no/such/dir"),
        (["run", "--model-name", "Bad Name"], "registry.model_name"),
    ],
)
def test_bad_options_name_the_field_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], culprit: str
) -> None:
    _fails(capsys, argv, culprit)
    _nothing_written(tmp_path)


def test_a_params_file_with_a_typo_names_section_and_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("training:\n  epochs: 2\n  lerning_rate: 0.1\n")
    _fails(capsys, ["run", "--params", str(params)], "training.lerning_rate")
    params.write_text("trainng:\n  epochs: 2\n")
    _fails(capsys, ["run", "--params", str(params)], "trainng")
    _fails(capsys, ["run", "--params", str(tmp_path / "missing.yaml")], "missing.yaml")
    _nothing_written(tmp_path)


def test_an_unreachable_mlflow_names_the_uri_and_the_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("SHIPYARD_MLFLOW_TRACKING_URI", uri)
    _fails(capsys, ["run"], uri, "SHIPYARD_MLFLOW_TRACKING_URI")
    _nothing_written(tmp_path)


def test_an_unreachable_s3_store_names_the_uri_and_the_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHIPYARD_STORE_URI", "s3://ml-data/shipyard")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    _fails(capsys, ["run"], "s3://ml-data/shipyard", "SHIPYARD_STORE_URI")
    _nothing_written(tmp_path)


def test_help_lists_every_command_and_each_one_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    text = parser.format_help()
    for command in ("demo", "run", "up", "down", "status"):
        assert command in text
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
    assert "--learning-rate" in capsys.readouterr().out


def test_status_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from shipyard.settings import Settings

    assert main(["status", "--settings"]) == 0
    out = capsys.readouterr().out
    assert all(f"SHIPYARD_{name.upper()}" in out for name in Settings.model_fields)
