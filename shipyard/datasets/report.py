"""Human-readable summaries of dataset versions (Prefect artifacts, CLI output)."""

from __future__ import annotations

from shipyard.datasets.manifest import Manifest


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def manifest_markdown(manifest: Manifest, location: str, max_files: int = 20) -> str:
    """Render a manifest as markdown: totals, schema and the first files."""
    lines = [
        f"# Dataset `{manifest.dataset}` version `{manifest.version}`",
        "",
        f"- Location: `{location}/versions/{manifest.version}.json`",
        f"- Source: `{manifest.source}`",
        f"- Created: {manifest.created_at.isoformat()}",
        f"- Files: {len(manifest.files)}, {_size(manifest.total_bytes)}"
        + (f", {manifest.total_rows} rows" if manifest.total_rows is not None else ""),
        "",
        "| file | format | size | rows | sha256 |",
        "|---|---|---|---|---|",
    ]
    for entry in manifest.files[:max_files]:
        lines.append(f"| `{entry.path}` | {entry.format} | {_size(entry.size)} | {entry.rows if entry.rows is not None else ''} | `{entry.sha256[:12]}` |")
    if len(manifest.files) > max_files:
        lines.append(f"| … {len(manifest.files) - max_files} more | | | | |")
    schema = next((f.columns for f in manifest.files if f.columns), None)
    if schema:
        shown = list(schema.items())[:12]
        lines += ["", "Schema: " + ", ".join(f"`{k}`: {v}" for k, v in shown) + (" …" if len(schema) > 12 else "")]
    return "\n".join(lines)
