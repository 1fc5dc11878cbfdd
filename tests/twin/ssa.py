"""Server-side apply's field ownership, simplified: a field is a leaf path; lists are atomic (owned whole).

Good enough for what clients see: a second manager applying another value to a field someone else owns gets
Kubernetes' 409 conflict message unless it forces; a manager's fields it stops applying are removed.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any

Path = tuple[str, ...]
_SKIPPED_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                 "managedFields", "selfLink", "deletionTimestamp", "generateName"}


def leaves(obj: dict[str, Any]) -> dict[Path, Any]:
    """Return every field an applied object sets: path -> value (dicts descend, everything else is a leaf)."""
    found: dict[Path, Any] = {}

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, (*path, k))
        else:
            found[path] = value

    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata":
            for mk, mv in (value or {}).items():
                if mk not in _SKIPPED_META:
                    walk(mv, ("metadata", mk))
        else:
            walk(value, (key,))
    return found


def value_at(obj: dict[str, Any], path: Path) -> Any:
    value: Any = obj
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def remove_path(obj: dict[str, Any], path: Path) -> None:
    """Delete a field and the dicts it leaves empty."""
    parents = [obj]
    for part in path[:-1]:
        nxt = parents[-1].get(part)
        if not isinstance(nxt, dict):
            return
        parents.append(nxt)
    parents[-1].pop(path[-1], None)
    for parent, part in zip(reversed(parents[:-1]), reversed(path[:-1]), strict=False):
        if parent.get(part) == {}:
            parent.pop(part)


def merge(base: dict[str, Any], patch: dict[str, Any], strategic: bool = False) -> dict[str, Any]:
    """Merge ``patch`` into a copy of ``base``: dicts merge, null deletes, lists replace (strategic: lists of
    named items merge by name)."""
    result = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value, strategic)
        elif strategic and isinstance(value, list) and isinstance(result.get(key), list) and _named(value) \
                and _named(result[key]):
            merged = {item["name"]: item for item in result[key]}
            for item in value:
                merged[item["name"]] = merge(merged.get(item["name"], {}), item, strategic)
            result[key] = list(merged.values())
        else:
            result[key] = copy.deepcopy(value)
    return result


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def dotted(path: Path) -> str:
    return "".join(f".{p}" for p in path)


@dataclass
class Owners:
    """Which manager owns which fields of one object."""

    fields: dict[str, set[Path]] = field(default_factory=dict)
    operations: dict[str, str] = field(default_factory=dict)

    def conflicts(self, manager: str, applied: dict[Path, Any], current: dict[str, Any]) -> list[tuple[str, Path]]:
        """Return (other manager, path) for each applied field another owns with a different value."""
        found = []
        for other, paths in sorted(self.fields.items()):
            if other == manager:
                continue
            for path in sorted(paths & set(applied)):
                if value_at(current, path) != applied[path]:
                    found.append((other, path))
        return found

    def take(self, manager: str, applied: dict[Path, Any], operation: str, force: bool = False) -> list[Path]:
        """Record ``manager``'s fields; return the fields an applier dropped that nobody else owns."""
        mine = set(applied)
        dropped: list[Path] = []
        if operation == "Apply":
            previous = self.fields.get(manager, set())
            others = set().union(*(p for m, p in self.fields.items() if m != manager))
            dropped = sorted(previous - mine - others)
        else:
            mine |= self.fields.get(manager, set())
        if force or operation == "Update":
            for other, paths in self.fields.items():
                if other != manager:
                    paths -= set(applied)
        self.fields[manager] = mine
        self.operations[manager] = operation
        self.fields = {m: p for m, p in self.fields.items() if p}
        return dropped

    def entries(self, api_version: str) -> list[dict[str, Any]]:
        """Return ``metadata.managedFields`` in the API's FieldsV1 shape."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = []
        for manager, paths in sorted(self.fields.items()):
            tree: dict[str, Any] = {}
            for path in paths:
                node = tree
                for part in path:
                    node = node.setdefault(f"f:{part}", {})
            out.append({"manager": manager, "operation": self.operations.get(manager, "Apply"),
                        "apiVersion": api_version, "time": stamp, "fieldsType": "FieldsV1", "fieldsV1": tree})
        return out


def conflicts_message(clashes: list[tuple[str, Path]], api_version: str) -> str:
    """Return the API server's 409 message for an apply that conflicts with other managers."""
    count = f"{len(clashes)} conflict{'s' if len(clashes) != 1 else ''}"
    if len(clashes) == 1:
        manager, path = clashes[0]
        return f'Apply failed with {count}: conflict with "{manager}" using {api_version}: {dotted(path)}'
    lines = []
    for manager in sorted({m for m, _ in clashes}):
        lines.append(f'conflicts with "{manager}" using {api_version}:')
        lines += [f"- {dotted(p)}" for m, p in clashes if m == manager]
    return f"Apply failed with {count}: " + "\n".join(lines)
