"""Settings: defaults, switching by environment alone, one-line errors, and the README table."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import ConfigError
from shipyard.settings import Settings, load_settings, settings_markdown, settings_table
from shipyard.storage import filesystem

REPO = Path(__file__).resolve().parents[2]


def test_defaults_keep_everything_under_home(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.home == tmp_path / ".shipyard"
    assert settings.resolved_store_uri() == str(tmp_path / ".shipyard" / "store")
    assert settings.resolved_mlflow_uri() == f"sqlite:///{tmp_path / '.shipyard' / 'mlflow.db'}"
    assert filesystem(settings).is_local


def test_environment_alone_switches_to_s3_and_a_remote_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_STORE_URI", "s3://ml-bucket/shipyard/")
    monkeypatch.setenv("SHIPYARD_MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    settings = load_settings()
    store = filesystem(settings)
    assert not store.is_local
    assert store.url("datasets", "digits") == "s3://ml-bucket/shipyard/datasets/digits"
    assert settings.resolved_mlflow_uri() == "http://mlflow.internal:5000"
    assert not settings.is_local_mlflow()


@pytest.mark.parametrize(("variable", "value"), [("SHIPYARD_INFERENCE_PORT", "http"), ("SHIPYARD_TRAIN_MODE", "gpu")])
def test_a_bad_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


@pytest.mark.parametrize("uri", ["gs://bucket/x", "s3://"])
def test_an_unsupported_store_uri_names_the_setting(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("SHIPYARD_STORE_URI", uri)
    with pytest.raises(ConfigError, match="SHIPYARD_STORE_URI"):
        filesystem(load_settings())


def test_every_setting_is_described_and_the_readme_table_matches() -> None:
    assert all(field.description for field in Settings.model_fields.values())
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]
    assert table.strip() == settings_markdown()
    assert len(settings_table()) == len(Settings.model_fields)


def _reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func)
            if target in {"os.getenv", "os.environ.get"}:
                lines.append(node.lineno)
        is_load = isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
        if is_load and ast.unparse(node.value) == "os.environ":  # type: ignore[attr-defined]
            lines.append(node.lineno)
    return lines


def test_no_module_but_settings_reads_environment_variables() -> None:
    offenders = []
    for package in ("shipyard", "flows", "tasks", "deployments"):
        for path in (REPO / package).rglob("*.py"):
            if path.name == "settings.py" and path.parent.name == "shipyard":
                continue
            offenders += [f"{path.relative_to(REPO)}:{n}" for n in _reads_environment(ast.parse(path.read_text()))]
    assert offenders == []


def test_credentials_in_a_uri_never_reach_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from shipyard import registry
    from shipyard.errors import RegistryError
    from tests.servers import free_port

    monkeypatch.setenv("SHIPYARD_MLFLOW_TRACKING_URI", f"http://alice:hunter2@127.0.0.1:{free_port()}")
    with pytest.raises(RegistryError) as info:
        registry.check(load_settings())
    assert "hunter2" not in str(info.value) and "alice" not in str(info.value)
    assert "SHIPYARD_MLFLOW_TRACKING_URI" in str(info.value)


def test_store_retries_default_to_the_patient_ladder_and_the_setting_cuts_both_loops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = filesystem(Settings(store_uri="s3://bucket/prefix"))
    fs: Any = store.fs
    assert fs.config_kwargs["retries"] == {"max_attempts": 8, "mode": "standard"} and fs.retries == 5
    monkeypatch.setenv("SHIPYARD_STORE_URI", "s3://bucket/prefix")
    monkeypatch.setenv("SHIPYARD_STORE_MAX_ATTEMPTS", "1")
    fast: Any = filesystem(load_settings()).fs
    assert fast.config_kwargs["retries"]["max_attempts"] == 1 and fast.retries == 1
