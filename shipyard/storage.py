"""The artifact store: one fsspec filesystem plus a root, local directory or S3 prefix.

Everything Shipyard persists (dataset objects and manifests, checkpoints, training results) goes through
:class:`Store`, so the same code runs against a local directory and S3. Build one with
:func:`filesystem`; functions that touch the store take it as a parameter.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from shipyard.errors import ConfigError, StoreError
from shipyard.settings import Settings, redact

log = logging.getLogger(__name__)

SETTING = "SHIPYARD_STORE_URI"
# Libraries whose exceptions mean "the store failed or cannot be reached".
_TRANSPORT_MODULES = frozenset({"botocore", "aiohttp", "aiobotocore", "s3fs", "urllib3"})


class AlreadyExists(StoreError):
    """A create-only write found the object already there."""


@dataclass(frozen=True)
class Store:
    """A filesystem and the root path under which Shipyard keeps its objects."""

    fs: fsspec.AbstractFileSystem
    root: str
    uri: str

    @property
    def is_local(self) -> bool:
        """Tell whether the store is a local directory."""
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        """Return the filesystem path of ``parts`` under the root."""
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def url(self, *parts: str) -> str:
        """Return a full URI (with protocol) for ``parts`` under the root."""
        path = self.path(*parts)
        return path if self.is_local else f"s3://{path}"

    def exists(self, *parts: str) -> bool:
        """Tell whether an object exists."""
        with self._errors(*parts):
            return bool(self.fs.exists(self.path(*parts)))

    def read_bytes(self, *parts: str) -> bytes:
        """Read a whole object."""
        with self._errors(*parts):
            data: bytes = self.fs.cat_file(self.path(*parts))
            return data

    def write_bytes(self, data: bytes, *parts: str, create_only: bool = False) -> None:
        """Write an object atomically: readers see the old object, the new one, or none.

        With ``create_only`` the write fails with :class:`AlreadyExists` if the object exists
        (S3 conditional write ``If-None-Match: *``; on local disk an exclusive link).
        """
        path = self.path(*parts)
        with self._errors(*parts):
            if self.is_local:
                self._write_local(path, data, create_only)
            elif create_only:
                try:
                    self.fs.pipe_file(path, data, mode="create")
                except (FileExistsError, OSError) as exc:
                    if _is_precondition_failure(exc):
                        raise AlreadyExists(f"{self.url(*parts)} already exists") from exc
                    raise
            else:
                self.fs.pipe_file(path, data)

    def _write_local(self, path: str, data: bytes, create_only: bool) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            if create_only:
                try:
                    os.link(tmp, path)
                except FileExistsError as exc:
                    raise AlreadyExists(f"{path} already exists") from exc
            else:
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def list(self, *parts: str) -> list[str]:
        """List the names directly under a prefix (empty if it does not exist)."""
        path = self.path(*parts)
        with self._errors(*parts):
            try:
                entries = self.fs.ls(path, detail=False, refresh=True)
            except FileNotFoundError:
                return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def get_file(self, local_path: str, *parts: str) -> None:
        """Download an object to a local file."""
        with self._errors(*parts):
            self.fs.get_file(self.path(*parts), local_path)

    def s3_client(self, max_pool_connections: int = 32, **config: Any) -> Any:
        """Build a boto3 client with this store's credentials, endpoint and retry policy (S3 stores only).

        Bulk transfers use it from many threads at once: boto3 clients are thread-safe, and checksummed
        uploads (``ChecksumSHA256``) need no payload signature, which saves a SHA-256 pass over every byte.
        """
        from botocore.config import Config

        if self.is_local:
            raise StoreError(f"{self.uri} is a local directory, not S3 ({SETTING})")
        fs: Any = self.fs
        config = {**(fs.config_kwargs or {}), "max_pool_connections": max_pool_connections,
                  "s3": {"payload_signing_enabled": False}, **config}
        kwargs = {k: v for k, v in {"aws_access_key_id": fs.key, "aws_secret_access_key": fs.secret,
                                    "aws_session_token": fs.token, "endpoint_url": fs.endpoint_url}.items() if v}
        kwargs.update(fs.client_kwargs or {})
        with _SESSION_LOCK:  # botocore sessions are not thread-safe; clients are
            return _boto_session().client("s3", config=Config(**config), **kwargs)

    def s3_credentials(self) -> Any:
        """Return botocore credentials for this store: its explicit keys, else botocore's standard chain.

        The chain covers environment keys, profiles, SSO, IRSA's web identity token and instance metadata;
        refreshable ones refresh on ``get_frozen_credentials()``. None if the chain finds nothing.
        """
        from botocore.credentials import Credentials

        if self.is_local:
            raise StoreError(f"{self.uri} is a local directory, not S3 ({SETTING})")
        fs: Any = self.fs
        if fs.key and fs.secret:
            return Credentials(fs.key, fs.secret, fs.token)
        with _SESSION_LOCK:
            return _boto_session().get_credentials()

    def check(self) -> None:
        """Fail with one line naming the URI and the setting if the store cannot be reached."""
        with self._errors():
            if self.is_local:
                _check_writable_dir(self.root, self.uri)
            else:
                bucket = self.root.split("/", 1)[0]
                self.fs.ls(bucket, refresh=True)

    @contextmanager
    def _errors(self, *parts: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except FileNotFoundError as exc:
            raise StoreError(f"{self.url(*parts)} not found in the store ({SETTING}={self.uri})") from exc
        except PermissionError as exc:
            where = self.url(*parts)
            raise StoreError(f"access denied to {where} (check credentials for {SETTING}={self.uri})") from exc
        except Exception as exc:  # botocore/aiohttp errors have no common base: translate once, here
            if type(exc).__module__.split(".")[0] in _TRANSPORT_MODULES or isinstance(exc, OSError):
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)  # no '[Errno 16]'
                reason = text.splitlines()[0] if text else type(exc).__name__
                at = f" at {self.url(*parts)}" if parts else ""
                raise StoreError(f"store {self.uri} is unreachable or failed{at} ({SETTING}): {reason}") from exc
            raise


_SESSION_LOCK = threading.Lock()


@functools.cache
def _boto_session() -> Any:
    """One boto3 session per process: it caches the parsed S3 model, so later clients cost ~5 ms, not ~60."""
    import boto3

    return boto3.session.Session()


@functools.cache
def _aio_session() -> Any:
    """One aiobotocore session per process, shared by every s3fs filesystem (same reason)."""
    from aiobotocore.session import get_session

    return get_session()


def _check_writable_dir(root: str, uri: str) -> None:
    """Fail unless ``root`` is (or could be created as) a writable directory; create nothing."""
    path = os.path.abspath(root)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path) or not os.access(path, os.W_OK):
        raise StoreError(f"store {uri} is not a writable directory ({SETTING}): {path}")


def _is_precondition_failure(exc: BaseException) -> bool:
    # s3fs turns the 412 into a bare OSError(EINVAL) on some servers (SeaweedFS): look down the chain too.
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__} {seen} {getattr(seen, 'response', '')}"
        if isinstance(seen, FileExistsError) or "PreconditionFailed" in text or "412" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def filesystem(settings: Settings, **storage_options: Any) -> Store:
    """Build the store named by the settings (nothing is contacted until first use)."""
    uri = settings.resolved_store_uri()
    protocol, _, rest = uri.partition("://") if "://" in uri else ("file", "", uri)
    if protocol in {"file", "local"}:
        root = os.path.abspath(rest)
        return Store(fs=fsspec.filesystem("file", auto_mkdir=True), root=root, uri=root)
    if protocol not in {"s3", "s3a"}:
        raise ConfigError(f"{SETTING}={uri}: unsupported scheme '{protocol}' (use s3://bucket/prefix or a local path)")
    if "@" in rest.split("/", 1)[0]:
        raise ConfigError(f"{SETTING}={redact(uri)} carries credentials, which would show wherever the URI does: "
                          "give S3 keys through AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or a role")
    if not rest.split("/", 1)[0]:
        raise ConfigError(f"{SETTING}={uri}: no bucket named (use s3://bucket/prefix)")
    # botocore retries throttling, 5xx and connection errors with backoff before s3fs sees them.
    attempts = settings.store_max_attempts
    options: dict[str, Any] = {"skip_instance_cache": True, "session": _aio_session(),
                               "config_kwargs": {"retries": {"max_attempts": attempts, "mode": "standard"}}}
    options.update(storage_options)
    fs = fsspec.filesystem("s3", **options)
    fs.retries = min(fs.retries, attempts)  # s3fs's own loop around botocore's (5 tries by default)
    return Store(fs=fs, root=rest.rstrip("/"), uri=f"s3://{rest.rstrip('/')}")


def probe(settings: Settings) -> None:
    """Check the store answers, failing within seconds (no retry ladder) with the URI and the setting."""
    uri = settings.resolved_store_uri()
    if "://" in uri and not uri.startswith(("file://", "local://")):
        store = filesystem(settings, config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 5,
                                                    "read_timeout": 10})
        store.fs.retries = 1  # s3fs's own retry loop, on top of botocore's
    else:
        store = filesystem(settings)
    store.check()
