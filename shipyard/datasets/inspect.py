"""Describe a file for the manifest: its format, and rows and columns for tabular files.

Each reader checks the file is readable in its format and fails with a :class:`DatasetError` naming the
file. Parquet and NPZ are checked from their metadata (footer, array headers); CSV is parsed in bounded
blocks to count rows; images are verified by Pillow.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from typing import BinaryIO, cast

from shipyard.datasets.manifest import FileEntry
from shipyard.datasets.source import Source, SourceFile
from shipyard.errors import DatasetError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npz": "npz",
           ".png": "image", ".jpg": "image", ".jpeg": "image", ".gif": "image", ".bmp": "image",
           ".webp": "image", ".tif": "image", ".tiff": "image"}
TABULAR = {"parquet", "csv", "npz"}

Table = tuple[int | None, dict[str, str] | None]


def file_format(rel: str) -> str:
    """Return the format a file name implies."""
    name = rel.rsplit("/", 1)[-1]
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return FORMATS.get(suffix, "other")


def describe(source: Source, file: SourceFile, sha256: str) -> FileEntry:
    """Read a file's format-specific summary, failing with the file's name if it is unreadable."""
    fmt = file_format(file.rel)
    rows: int | None = None
    columns: dict[str, str] | None = None
    reader = _READERS.get(fmt)
    if reader is not None:
        try:
            with source.open(file) as fh:
                rows, columns = reader(cast(BinaryIO, fh))
        except DatasetError as exc:
            raise DatasetError(f"{file.rel}: {exc}") from exc
        except Exception as exc:  # readers raise many unrelated types for a damaged file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in reason)[:200]  # no raw bytes
            raise DatasetError(f"{file.rel}: unreadable {_LABELS[fmt]} ({reason})") from exc
    return FileEntry(path=file.rel, size=file.size, sha256=sha256, format=fmt, rows=rows, columns=columns)


def _parquet(fh: BinaryIO) -> Table:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(fh)
    return meta.metadata.num_rows, {f.name: str(f.type) for f in meta.schema_arrow}


def _csv(fh: BinaryIO) -> Table:
    import pyarrow.csv as pcsv

    try:
        reader = pcsv.open_csv(fh, read_options=pcsv.ReadOptions(block_size=2**20))
    except Exception as exc:
        if "Empty CSV file" in str(exc):
            raise DatasetError("empty CSV (no header row)") from exc
        raise
    rows = sum(batch.num_rows for batch in reader)
    return rows, {f.name: str(f.type) for f in reader.schema}


def _npz(fh: BinaryIO) -> Table:
    import numpy as np

    headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    columns: dict[str, str] = {}
    leading: set[int] = set()
    with zipfile.ZipFile(fh) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as npy:
                version = np.lib.format.read_magic(npy)
                header = headers.get(version)
                if header is None:
                    raise DatasetError(f"{member}: unsupported .npy format version {version}")
                shape, _, dtype = header(npy)  # the header only: the array itself is not read
            columns[member.removesuffix(".npy")] = f"{dtype}{list(shape[1:])}"
            leading.add(shape[0] if shape else 1)
    if not columns:
        raise DatasetError("NPZ archive holds no arrays")
    return (leading.pop() if len(leading) == 1 else None), columns


def _image(fh: BinaryIO) -> Table:
    from PIL import Image

    with Image.open(fh) as image:
        image.verify()
    return None, None


_READERS: dict[str, Callable[[BinaryIO], Table]] = {"parquet": _parquet, "csv": _csv, "npz": _npz, "image": _image}
_LABELS = {"parquet": "Parquet", "csv": "CSV", "npz": "NPZ", "image": "image"}
