"""The demo dataset: scikit-learn's bundled handwritten digits, written as Parquet shards."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

SHARDS = 4


def write_demo_source(directory: Path) -> Path:
    """Write the digits data set as Parquet shards into ``directory`` (once) and return it."""
    if directory.exists():  # checked before importing pandas and scikit-learn: ~1.8 s of every cached run
        return directory
    import pandas as pd
    from sklearn.datasets import load_digits

    # A directory of its own: two first runs at once each write one, the first rename wins.
    tmp = directory.with_name(f".{directory.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    digits = load_digits()
    frame = pd.DataFrame(digits.data.astype("float32"), columns=[f"pixel_{i}" for i in range(64)])
    frame["label"] = digits.target.astype("int64")
    size = -(-len(frame) // SHARDS)
    for shard in range(SHARDS):
        part = frame.iloc[shard * size : (shard + 1) * size]
        part.to_parquet(tmp / f"part-{shard:05d}.parquet", index=False)
    try:
        tmp.rename(directory)  # atomic: a half-written demo source is never seen as complete
    except OSError:
        if not directory.is_dir():
            raise
        shutil.rmtree(tmp)  # another run wrote it first: the same rows
        return directory
    log.info("wrote demo digits (%d rows) to %s", len(frame), directory)
    return directory


def resolve_source(source: str, home: Path) -> str:
    """Return the source to stage: 'demo' becomes the bundled digits written once under ``home``."""
    if source != "demo":
        return source
    return str(write_demo_source(home / "demo" / "digits").resolve())
