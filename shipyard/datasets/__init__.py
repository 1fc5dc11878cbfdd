"""Datasets: immutable, content-addressed versions in the store.

Store layout::

    objects/<sha[:2]>/<sha256>                 each file's bytes, stored once, shared by all datasets
    datasets/<name>/versions/<version>.json    the manifest, written last and create-only

A version id derives from the manifest's file list (relative path, size, SHA-256), so the same content
always gives the same id, and a manifest is never overwritten.
"""

from shipyard.datasets.manifest import FileEntry, Manifest
from shipyard.datasets.stage import StageResult, list_versions, load_manifest, stage
from shipyard.datasets.pull import pull

__all__ = ["FileEntry", "Manifest", "StageResult", "list_versions", "load_manifest", "pull", "stage"]
