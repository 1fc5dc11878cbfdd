"""What the training key knows of the recipe's code: a hash of its source files, and git's view of them.

Hashed, exactly (see docs/training.md, "Caching"):

* the entrypoint's module is ``shipyard.*`` (the built-in recipes): that one module file; the rest of
  Shipyard is covered by its version, which the training key also holds;
* the module belongs to a regular package of the user's (``mypkg.models.net:recipe``): every ``*.py`` file
  under the top-level package's directory (``mypkg/``), recursively, skipping ``__pycache__`` and hidden
  directories: editing a helper module the recipe imports changes the hash too;
* a top-level module (``myrecipe:recipe``) or a namespace package: that one module file.

Each file contributes its path relative to the hashed root and the SHA-256 of its bytes, in sorted order.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from shipyard.errors import TrainingError

log = logging.getLogger(__name__)

SHIPYARD_PACKAGE = "shipyard"


class RecipeCode(BaseModel):
    """The recipe's code as the training key sees it."""

    model_config = ConfigDict(frozen=True)

    entrypoint: str
    hash: str
    root: str
    files: int
    git_commit: str | None = None
    git_dirty: bool | None = None


def code_files(entrypoint: str) -> tuple[Path, list[Path]]:
    """Return the root the files are named relative to, and the source files that make up the recipe."""
    module_name = entrypoint.partition(":")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainingError(f"entrypoint '{entrypoint}': cannot import module '{module_name}' ({exc})") from exc
    if not getattr(module, "__file__", None):
        raise TrainingError(f"entrypoint '{entrypoint}': module '{module_name}' has no source file to hash")
    own = Path(str(module.__file__)).resolve()
    top_name = module_name.split(".")[0]
    top = sys.modules[top_name]
    top_file = getattr(top, "__file__", None)
    if top_name == SHIPYARD_PACKAGE or not hasattr(top, "__path__") or not top_file:
        return own.parent, [own]
    root = Path(str(top_file)).resolve().parent
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__" and not d.startswith("."))
        files += [Path(directory) / n for n in names if n.endswith(".py")]
    return root, sorted(files)


def recipe_code(entrypoint: str) -> RecipeCode:
    """Hash the recipe's source files and ask git (if it is a checkout) for the commit and dirty flag."""
    root, files = code_files(entrypoint)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    commit, dirty = _git(root)
    return RecipeCode(entrypoint=entrypoint, hash=digest.hexdigest()[:16], root=str(root), files=len(files),
                      git_commit=commit, git_dirty=dirty)


def _git(root: Path) -> tuple[str | None, bool | None]:
    """Return (commit, dirty) of the checkout holding ``root``, or (None, None) outside one or without git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "."], capture_output=True,
                                text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("git unavailable for %s: %s", root, exc)
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
