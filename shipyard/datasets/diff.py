"""Compare two versions of a dataset: which files were added, removed or changed, and how schemas moved."""

from __future__ import annotations

from dataclasses import dataclass, field

from shipyard.datasets.manifest import FileEntry, Manifest


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


def diff(old: Manifest, new: Manifest) -> DatasetDiff:
    """Compare two manifests by path and content hash."""
    before = {e.path: e for e in old.files}
    after = {e.path: e for e in new.files}
    common = sorted(before.keys() & after.keys())
    changed = [(before[p], after[p]) for p in common if before[p].sha256 != after[p].sha256]
    return DatasetDiff(
        old=old.version, new=new.version,
        added=[after[p] for p in sorted(after.keys() - before.keys())],
        removed=[before[p] for p in sorted(before.keys() - after.keys())],
        changed=changed,
        unchanged=len(before.keys() & after.keys()) - len(changed),
        schema_changes=_schema_changes(old.schemas, new.schemas),
    )


def _schema_changes(old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]) -> list[str]:
    lines = [f"{g}: new shard group ({len(new[g])} columns)" for g in sorted(new.keys() - old.keys())]
    lines += [f"{g}: shard group removed" for g in sorted(old.keys() - new.keys())]
    for group in sorted(old.keys() & new.keys()):
        was, now = old[group], new[group]
        lines += [f"{group}: column '{c}' added ({now[c]})" for c in now if c not in was]
        lines += [f"{group}: column '{c}' removed" for c in was if c not in now]
        lines += [f"{group}: column '{c}' {was[c]} -> {now[c]}" for c in was if c in now and was[c] != now[c]]
    return lines
