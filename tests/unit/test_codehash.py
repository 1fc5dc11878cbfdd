"""Code-aware caching and a recipe's own parameters: edits retrain and say why; unchanged code is a hit."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.cli import build_parser
from shipyard.cli.pipeline import build_params
from shipyard.errors import ConfigError, TrainingError
from shipyard.params import TrainParams
from shipyard.refs import DatasetRef
from shipyard.storage import Store
from shipyard.training import plan_training, resolve_params, train, training_key
from shipyard.training.codehash import recipe_code
from shipyard.training.trainer import launched_result

REF = DatasetRef(name="digits", version="0123456789abcdef")

RECIPE = '''
from pydantic import BaseModel, Field
from shipyard.training.digits import DigitsRecipe


class Knobs(BaseModel):
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout before the last layer.")
    label: str = "plain"


def recipe(params, knobs: Knobs):
    r = DigitsRecipe(params)
    r.knobs = knobs
    return r
'''


@pytest.fixture
def user_code(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A user's package on sys.path: pkg/model.py (the entrypoint) and pkg/helpers.py."""
    name = f"userpkg_{uuid.uuid4().hex[:8]}"
    package = tmp_path / "code" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(textwrap.dedent(RECIPE))
    (package / "helpers.py").write_text("SCALE = 1\n")
    sys.path.insert(0, str(package.parent))
    yield f"{name}.model:recipe", package
    sys.path.remove(str(package.parent))


def test_editing_the_recipe_retrains_and_says_why_unchanged_code_is_a_hit(
        user_code: tuple[str, Path], store: Store, digits: Path) -> None:
    entrypoint, package = user_code
    params = resolve_params(TrainParams(entrypoint=entrypoint, epochs=1, hidden_units=8))
    first = plan_training(store, REF, params)
    assert first.cached is None and first.reason.startswith("cache miss: no finished training")
    trained = train(store, REF, params, digits, key=first.key)
    assert trained.code.hash == first.code.hash and trained.key == first.key

    again = plan_training(store, REF, params)
    assert again.cached is not None and again.reason.startswith("cache hit: same data, params and code")

    (package / "model.py").write_text((package / "model.py").read_text() + "\n# tuned the model\n")
    edited = plan_training(store, REF, params)
    assert edited.cached is None and edited.key != first.key
    assert edited.reason == (f"cache miss: recipe code changed ({first.code.hash[:8]}... -> "
                             f"{edited.code.hash[:8]}...)")

    (package / "helpers.py").write_text("SCALE = 2\n")  # a module the recipe's package holds counts too
    assert recipe_code(entrypoint).hash != edited.code.hash


def test_force_trains_under_a_key_of_its_own(user_code: tuple[str, Path], store: Store, digits: Path) -> None:
    params = resolve_params(TrainParams(entrypoint=user_code[0], epochs=1, hidden_units=8))
    normal = plan_training(store, REF, params)
    train(store, REF, params, digits, key=normal.key)
    forced = plan_training(store, REF, params, force=True, salt="run-1")
    assert forced.cached is None and forced.key != normal.key and "force" in forced.reason
    assert plan_training(store, REF, params).cached is not None  # the unforced result is still there


def test_forced_runs_train_apart_and_a_retried_forced_run_finds_its_own_result(
        user_code: tuple[str, Path], store: Store, digits: Path) -> None:
    params = resolve_params(TrainParams(entrypoint=user_code[0], epochs=1, hidden_units=8))
    first = plan_training(store, REF, params, force=True, salt="run-1")
    second = plan_training(store, REF, params, force=True, salt="run-2")
    assert len({first.key, second.key, plan_training(store, REF, params).key}) == 3
    train(store, REF, params, digits, key=first.key)
    retried = plan_training(store, REF, params, force=True, salt="run-1")  # the same forced run, retried
    assert retried.key == first.key and retried.cached is not None and retried.cached.key == first.key
    # what the flow reads back after launching the forced run "run-1": the result the plan's key trained
    assert launched_result(store, first, REF, params, "run-1", True, "train-flow/run-1").key == first.key
    assert plan_training(store, REF, params, force=True, salt="run-2").cached is None


def test_shipyards_own_recipe_hashes_its_module_only() -> None:
    code = recipe_code("shipyard.training.digits:recipe")
    assert code.files == 1 and code.root.endswith("training")


def test_recipe_params_are_validated_completed_and_part_of_the_key(user_code: tuple[str, Path]) -> None:
    entrypoint = user_code[0]
    params = resolve_params(TrainParams(entrypoint=entrypoint, recipe_params={"dropout": 0.25}))
    assert params.recipe_params == {"dropout": 0.25, "label": "plain"}
    defaults = resolve_params(TrainParams(entrypoint=entrypoint))
    assert training_key(REF, params) != training_key(REF, defaults)
    with pytest.raises(ConfigError, match=r"training\.recipe_params\.dropout"):
        resolve_params(TrainParams(entrypoint=entrypoint, recipe_params={"dropout": 2}))
    with pytest.raises(ConfigError, match=r"training\.recipe_params.*declares no parameters"):
        resolve_params(TrainParams(recipe_params={"dropout": 0.1}))


def test_equal_recipe_params_written_differently_get_one_key(user_code: tuple[str, Path]) -> None:
    entrypoint = user_code[0]
    spellings = [{}, {"dropout": 0, "label": "plain"}, {"label": "plain", "dropout": 0.0}]
    keys = {training_key(REF, resolve_params(TrainParams(entrypoint=entrypoint, recipe_params=r)))
            for r in spellings}  # as a flow run's parameters may hold them (JSON from the UI or a file)
    assert len(keys) == 1
    given = [TrainParams(entrypoint=entrypoint, recipe_params=r)  # unresolved, as a Python caller may pass them
             for r in ({"dropout": 0.5, "label": "wide"}, {"label": "wide", "dropout": 0.5})]
    assert training_key(REF, given[0]) == training_key(REF, given[1])


def test_the_key_without_a_code_hash_is_the_plans_and_follows_edits_of_the_code(
        user_code: tuple[str, Path], store: Store) -> None:
    entrypoint, package = user_code
    params = resolve_params(TrainParams(entrypoint=entrypoint))
    before = training_key(REF, params)
    assert before == plan_training(store, REF, params).key
    (package / "helpers.py").write_text("SCALE = 3\n")
    assert training_key(REF, params) == plan_training(store, REF, params).key != before


def test_the_cli_sets_recipe_params_metric_force_and_a_staged_version(user_code: tuple[str, Path]) -> None:
    args = build_parser().parse_args(["run", "--entrypoint", user_code[0], "--set", "dropout=0.5", "--set",
                                      "label=wide", "--metric", "val_loss", "--force",
                                      "--dataset-version", "0123abcd"])
    params = build_params(args)
    assert params["training"].recipe_params == {"dropout": 0.5, "label": "wide"}
    assert params["registry"].metric == "val_loss"
    assert params["force"] is True and params["dataset"].version == "0123abcd"
    bad = build_parser().parse_args(["run", "--entrypoint", user_code[0], "--set", "dropout=lots"])
    with pytest.raises(ConfigError, match=r"training\.recipe_params\.dropout"):
        build_params(bad)


def _package(root: Path, files: dict[str, str]) -> str:
    """Write a package of the user's under ``root`` and put it on sys.path; return its name."""
    name = f"userpkg_{uuid.uuid4().hex[:8]}"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / name / rel).write_text(text)
    return name


@pytest.fixture
def code_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "code"
    root.mkdir()
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


def test_the_hash_covers_every_python_file_of_the_package_by_name_and_bytes_and_nothing_else(
        code_root: Path) -> None:
    name = _package(code_root, {"models/net.py": RECIPE, "models/__init__.py": "", "helpers.py": "SCALE = 1\n",
                                "__pycache__/stale.py": "", ".venv/site.py": "", "README.txt": "notes\n"})
    package = code_root / name
    entrypoint = f"{name}.models.net:recipe"
    code = recipe_code(entrypoint)
    assert (code.files, code.root, code.entrypoint) == (4, str(package.resolve()), entrypoint)

    for ignored in ("__pycache__/stale.py", ".venv/site.py", "README.txt"):  # caches, hidden dirs, data
        (package / ignored).write_text("changed\n")
    assert recipe_code(entrypoint).hash == code.hash

    (package / "helpers.py").rename(package / "helper.py")  # same bytes under another name
    renamed = recipe_code(entrypoint)
    assert renamed.hash != code.hash and renamed.files == 4
    (package / "models" / "__init__.py").write_text("# nested\n")
    assert recipe_code(entrypoint).hash != renamed.hash


def test_a_top_level_module_or_a_namespace_package_hashes_that_one_file(code_root: Path) -> None:
    module = f"toplevel_{uuid.uuid4().hex[:8]}"
    (code_root / f"{module}.py").write_text(RECIPE)
    (code_root / "neighbour.py").write_text("X = 1\n")
    top = recipe_code(f"{module}:recipe")
    assert (top.files, top.root) == (1, str(code_root.resolve()))
    (code_root / "neighbour.py").write_text("X = 2\n")
    assert recipe_code(f"{module}:recipe").hash == top.hash

    namespace = f"ns_{uuid.uuid4().hex[:8]}"
    (code_root / namespace).mkdir()
    (code_root / namespace / "net.py").write_text(RECIPE)
    (code_root / namespace / "other.py").write_text("Y = 1\n")
    spaced = recipe_code(f"{namespace}.net:recipe")
    assert (spaced.files, spaced.root) == (1, str((code_root / namespace).resolve()))
    (code_root / namespace / "other.py").write_text("Y = 2\n")
    assert recipe_code(f"{namespace}.net:recipe").hash == spaced.hash


def test_entrypoints_without_code_to_hash_fail_naming_the_module() -> None:
    with pytest.raises(TrainingError) as missing:
        recipe_code("no_such_pkg_1f2e.models:recipe")
    assert str(missing.value) == ("entrypoint 'no_such_pkg_1f2e.models:recipe': cannot import module "
                                  "'no_such_pkg_1f2e.models' (No module named 'no_such_pkg_1f2e')")
    with pytest.raises(TrainingError) as builtin:
        recipe_code("sys:recipe")
    assert str(builtin.value) == "entrypoint 'sys:recipe': module 'sys' has no source file to hash"


def test_a_git_checkout_records_its_commit_and_whether_the_package_is_dirty(code_root: Path) -> None:
    name = _package(code_root, {"net.py": RECIPE})
    entrypoint = f"{name}.net:recipe"
    assert (recipe_code(entrypoint).git_commit, recipe_code(entrypoint).git_dirty) == (None, None)  # no checkout

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(code_root), "-c", "user.name=t", "-c", "user.email=t@example.com",
                               *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "recipe")
    clean = recipe_code(entrypoint)
    assert (clean.git_commit, clean.git_dirty) == (git("rev-parse", "HEAD"), False)
    (code_root / name / "net.py").write_text(RECIPE + "\n# tuned\n")
    assert recipe_code(entrypoint).git_dirty is True
    (code_root / ".git" / "index").write_bytes(b"damaged")  # git status fails; the commit is still known
    broken = recipe_code(entrypoint)
    assert (broken.git_commit, broken.git_dirty) == (clean.git_commit, None)


def test_without_git_the_code_is_still_hashed_and_the_debug_log_says_why_there_is_no_commit(
        code_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    name = _package(code_root, {"net.py": RECIPE})
    monkeypatch.setenv("PATH", str(code_root / "no-bin"))  # an image without git
    with caplog.at_level(logging.DEBUG, logger="shipyard.training.codehash"):
        code = recipe_code(f"{name}.net:recipe")
    assert (code.files, code.git_commit, code.git_dirty) == (2, None, None)
    assert [r.getMessage() for r in caplog.records] == [
        f"git unavailable for {code.root}: [Errno 2] No such file or directory: 'git'"]
