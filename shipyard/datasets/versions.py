"""Read published versions: load a manifest, list versions and datasets, resolve 'latest' or a short id."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor

from pydantic import ValidationError

from shipyard.datasets.manifest import FileEntry, Manifest, manifest_key
from shipyard.datasets.shards import read_shard
from shipyard.errors import DatasetError, StoreError
from shipyard.storage import Store


def load_manifest(store: Store, name: str, version: str) -> Manifest:
    """Read a version's manifest, naming the dataset, version and store if it is missing."""
    try:
        data = store.read_bytes(*manifest_key(name, version))
    except StoreError as exc:
        if not store.exists(*manifest_key(name, version)):
            raise DatasetError(
                f"dataset '{name}' has no version {version} under {store.url('datasets', name)} "
                f"(list versions with: shipyard data ls {name})"
            ) from exc
        raise
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise DatasetError(f"manifest {store.url(*manifest_key(name, version))} is not a valid manifest: "
                           f"{exc.errors()[0]['msg']}") from exc


def version_ids(store: Store, name: str) -> list[str]:
    """Return the ids of a dataset's versions, in no particular order."""
    return [n.removesuffix(".json") for n in store.list("datasets", name, "versions") if n.endswith(".json")]


def list_versions(store: Store, name: str, pool: Executor | None = None) -> list[Manifest]:
    """Return a dataset's versions, oldest first."""
    ids = version_ids(store, name)
    if pool is None:
        manifests = [load_manifest(store, name, v) for v in ids]
    else:
        manifests = list(pool.map(lambda v: load_manifest(store, name, v), ids))
    return sorted(manifests, key=lambda m: m.created_at)


def list_datasets(store: Store) -> list[str]:
    """Return the names of the datasets in the store."""
    return [n for n in store.list("datasets") if version_ids(store, n)]


def resolve_version(store: Store, name: str, ref: str) -> str:
    """Turn 'latest', a full id or a unique prefix of one into a version id."""
    ids = version_ids(store, name)
    if not ids:
        raise DatasetError(f"dataset '{name}' has no versions under {store.url('datasets', name)} "
                           "(stage one with: shipyard data stage NAME SOURCE)")
    if ref == "latest":
        return list_versions(store, name)[-1].version
    matches = [v for v in ids if v.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    problem = "matches several versions" if matches else "matches no version"
    raise DatasetError(f"'{ref}' {problem} of dataset '{name}' (list versions with: shipyard data ls {name})")


def iter_files(store: Store, manifest: Manifest) -> Iterator[FileEntry]:
    """Yield a version's file entries in path order, streaming its shards (or its inline list)."""
    yield from manifest.files
    for sha256 in manifest.shards:
        yield from read_shard(store, manifest.dataset, sha256)


def latest(store: Store, name: str) -> Manifest | None:
    """Return the newest version of ``name``, or None if it has none."""
    versions = list_versions(store, name)
    return versions[-1] if versions else None


def load_staged(store: Store, name: str, ref: str) -> Manifest:
    """Return the manifest of an already staged version given as 'latest', a full id or a unique prefix."""
    return load_manifest(store, name, resolve_version(store, name, ref))
