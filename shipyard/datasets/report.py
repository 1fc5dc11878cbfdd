"""Human-readable summaries of dataset versions and diffs (Prefect artifacts, CLI output)."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from shipyard.datasets.diff import DatasetDiff
from shipyard.datasets.manifest import FileEntry, Manifest


def human_size(n: int) -> str:
    """Format a byte count the way people read it (1.5 MB)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def totals(manifest: Manifest) -> str:
    """Summarise a version in one line: files, size, rows."""
    rows = f", {manifest.total_rows:,} rows" if manifest.total_rows is not None else ""
    return f"{manifest.file_count:,} files, {human_size(manifest.total_bytes)}{rows}"


def manifest_markdown(manifest: Manifest, location: str, max_files: int = 20,
                      files: Iterable[FileEntry] | None = None) -> str:
    """Render a manifest as markdown: totals, schema per shard group and the first of ``files``, if given."""
    lines = [
        f"# Dataset `{manifest.dataset}` version `{manifest.version}`",
        "",
        f"- Manifest: `{location}/versions/{manifest.version}.json`",
        f"- Source: `{manifest.source}`",
        f"- Created: {manifest.created_at.isoformat()}",
        f"- Contents: {totals(manifest)}",
        f"- Pull it: `shipyard data pull {manifest.dataset} {manifest.version}`",
        f"- List its files: `shipyard data show {manifest.dataset} {manifest.version}`",
    ]
    listed = list(islice(files if files is not None else manifest.files, max_files))
    if listed:
        lines += ["", "| file | format | size | rows | sha256 |", "|---|---|---|---|---|"]
    for entry in listed:
        rows = "" if entry.rows is None else f"{entry.rows:,}"
        lines.append(f"| `{entry.path}` | {entry.format} | {human_size(entry.size)} | {rows} | `{entry.sha256[:12]}` |")
    if listed and manifest.file_count > len(listed):
        lines.append(f"| … {manifest.file_count - len(listed):,} more | | | | |")
    for group, columns in manifest.schemas.items():
        shown = list(columns.items())[:12]
        more = f" … ({len(columns) - 12} more)" if len(columns) > 12 else ""
        lines += ["", f"Schema of `{group}`: " + ", ".join(f"`{k}`: {v}" for k, v in shown) + more]
    return "\n".join(lines)


def diff_lines(change: DatasetDiff) -> list[str]:
    """Render a diff as lines of text: one per file, then schema changes and a summary."""
    if change.identical:
        return [f"{change.old} and {change.new} hold the same files"]
    lines = [f"+ {e.path}  ({human_size(e.size)})" for e in change.added]
    lines += [f"- {e.path}  ({human_size(e.size)})" for e in change.removed]
    for old, new in change.changed:
        rows = "" if old.rows is None or new.rows is None else f", rows {old.rows:,} -> {new.rows:,}"
        lines.append(f"M {new.path}  ({human_size(old.size)} -> {human_size(new.size)}{rows})")
    lines += [f"schema: {line}" for line in change.schema_changes]
    lines.append(f"{len(change.added)} added, {len(change.removed)} removed, {len(change.changed)} changed, "
                 f"{change.unchanged} unchanged; a pull moves {human_size(change.bytes_to_transfer)}")
    return lines
