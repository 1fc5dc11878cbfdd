"""Importing does nothing, the core is Prefect-free, and the serving app stays small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
