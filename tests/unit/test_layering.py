"""Importing does nothing, the core is Prefect-free, and the serving app stays small (import contracts)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / package).rglob("*.py") if p.name != "__main__.py"
    )


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # HOME is elsewhere: libraries (Prefect, matplotlib) keep their own dot-directories there.
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd.parent / "home"), "PYTHONPATH": str(REPO)})


def test_importing_every_module_creates_nothing_and_touches_no_service(tmp_path: Path) -> None:
    modules = _modules("shipyard") + _modules("flows") + _modules("tasks") + _modules("deployments")
    code = (
        "import importlib, mlflow\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import mlflow.tracking._tracking_service.utils as u\n"
        "print('tracking-uri-set' if u._tracking_uri else 'clean')\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    done = _python(code, work)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("clean")
    assert sorted(p.name for p in work.iterdir()) == []


def test_the_core_and_the_serving_app_do_not_import_prefect(tmp_path: Path) -> None:
    core = [m for m in _modules("shipyard") if not m.startswith("shipyard.cli")]
    code = (
        "import importlib, sys\n"
        f"for m in {core!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))\n"
    )
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("shipyard", "flows", "tasks", "deployments")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(root), "PYTHONPATH": str(root)})


def test_the_import_contracts_hold() -> None:
    done = _lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "forbidden"), [
    ("shipyard/serving/model.py", "import prefect"),
    ("shipyard/serving/app.py", "from shipyard.rollout import local"),
    ("shipyard/serving/metrics.py", "import shipyard.cli"),
    ("shipyard/registry.py", "from prefect import task"),
    ("tasks/stage.py", "import flows.pipeline"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, forbidden: str) -> None:
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as planted:
        planted.write(f"\n{forbidden}  # planted\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and module.removesuffix(".py").replace("/", ".") in done.stdout
