"""Work-pool base job templates, kept as JSON files in ``deployments/templates/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shipyard.errors import ConfigError

TEMPLATES = Path(__file__).with_name("templates")


def load(name: str) -> dict[str, Any]:
    """Return the base job template ``templates/<name>.json`` (for example 'gpu-train')."""
    path = TEMPLATES / f"{name}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in TEMPLATES.glob("*.json")))
        raise ConfigError(f"no base job template {path} (known: {known})")
    template: dict[str, Any] = json.loads(path.read_text())
    return template
