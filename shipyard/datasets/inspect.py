"""Describe a file for the manifest: format, and rows and columns for tabular files."""

from __future__ import annotations

import fsspec

from shipyard.datasets.manifest import FileEntry
from shipyard.errors import DatasetError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npz": "npz",
           ".png": "image", ".jpg": "image", ".jpeg": "image"}


def file_format(rel: str) -> str:
    """Return the format a file name implies."""
    suffix = "." + rel.rsplit(".", 1)[-1].lower() if "." in rel else ""
    return FORMATS.get(suffix, "other")


def describe_file(fs: fsspec.AbstractFileSystem, path: str, rel: str, sha256: str) -> FileEntry:
    """Read a file's size and, for Parquet, its row count and schema."""
    size = int(fs.size(path))
    fmt = file_format(rel)
    rows: int | None = None
    columns: dict[str, str] | None = None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            with fs.open(path, "rb") as fh:
                meta = pq.ParquetFile(fh)
                rows = meta.metadata.num_rows
                columns = {f.name: str(f.type) for f in meta.schema_arrow}
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DatasetError(f"{path}: unreadable Parquet ({exc})") from exc
    return FileEntry(path=rel, size=size, sha256=sha256, format=fmt, rows=rows, columns=columns)
