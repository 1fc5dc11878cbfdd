"""Compare two versions of a dataset: which files were added, removed or changed, and how schemas moved."""

from __future__ import annotations

from dataclasses import dataclass, field

from shipyard.datasets.manifest import FileEntry, Manifest
from shipyard.datasets.versions import iter_files
from shipyard.storage import Store


@dataclass(frozen=True)
class DatasetDiff:
    """The difference from version ``old`` to version ``new``."""

    old: str
    new: str
    added: list[FileEntry] = field(default_factory=list)
    removed: list[FileEntry] = field(default_factory=list)
    changed: list[tuple[FileEntry, FileEntry]] = field(default_factory=list)
    unchanged: int = 0
    schema_changes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Tell whether the two versions hold the same files."""
        return not (self.added or self.removed or self.changed)

    @property
    def bytes_to_transfer(self) -> int:
        """Return how many bytes a pull of ``new`` moves when ``old`` is already in the cache."""
        have = {e.sha256 for e in self.removed} | {o.sha256 for o, _ in self.changed}
        fresh = {e.sha256: e.size for e in self.added} | {n.sha256: n.size for _, n in self.changed}
        return sum(size for sha, size in fresh.items() if sha not in have)


def diff(store: Store, old: Manifest, new: Manifest) -> DatasetDiff:
    """Compare two versions by path and content hash, walking both file lists in path order together.

    Memory grows with the number of differences, not with the number of files.
    """
    added: list[FileEntry] = []
    removed: list[FileEntry] = []
    changed: list[tuple[FileEntry, FileEntry]] = []
    unchanged = 0
    before, after = iter_files(store, old), iter_files(store, new)
    left, right = next(before, None), next(after, None)
    while left is not None or right is not None:
        if right is None or (left is not None and left.path < right.path):
            removed.append(left)  # type: ignore[arg-type]  # left is not None here
            left = next(before, None)
        elif left is None or right.path < left.path:
            added.append(right)
            right = next(after, None)
        else:
            if left.sha256 != right.sha256:
                changed.append((left, right))
            else:
                unchanged += 1
            left, right = next(before, None), next(after, None)
    return DatasetDiff(old=old.version, new=new.version, added=added, removed=removed, changed=changed,
                       unchanged=unchanged, schema_changes=_schema_changes(old.schemas, new.schemas))


def _schema_changes(old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]) -> list[str]:
    lines = [f"{g}: new shard group ({len(new[g])} columns)" for g in sorted(new.keys() - old.keys())]
    lines += [f"{g}: shard group removed" for g in sorted(old.keys() - new.keys())]
    for group in sorted(old.keys() & new.keys()):
        was, now = old[group], new[group]
        lines += [f"{group}: column '{c}' added ({now[c]})" for c in now if c not in was]
        lines += [f"{group}: column '{c}' removed" for c in was if c not in now]
        lines += [f"{group}: column '{c}' {was[c]} -> {now[c]}" for c in was if c in now and was[c] != now[c]]
    return lines
