"""Content-addressed objects on S3: checksummed single and multipart uploads, verified before they count.

Single-request uploads go through ``obstore`` (the Rust ``object_store`` crate): create-only
(``If-None-Match: *``), with ``x-amz-checksum-sha256`` computed for the body, so servers that check it
(AWS, SeaweedFS, MinIO) refuse a corrupted body outright, and retries of 5xx, throttling and timeouts with
backoff. Multipart uploads go through botocore (obstore cannot complete one create-only, nor promise to
abort it): every part carries its SHA-256, completion is create-only, and any failure aborts the upload.
The answer is checked too: the SHA-256 the server echoes or the ETag against the body's MD5; where
neither matches (or the server echoes neither), the object is read back and hashed. A mismatch is
uploaded again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import obstore
from botocore.exceptions import BotoCoreError, ClientError
from obstore.exceptions import AlreadyExistsError, BaseError, GenericError
from obstore.store import S3Store

from shipyard.datasets.manifest import object_key
from shipyard.datasets.source import Source, SourceFile
from shipyard.datasets.transfer import Blob, BufferPool, StageOptions, check_unchanged
from shipyard.errors import DatasetError, StoreError
from shipyard.storage import Store

log = logging.getLogger(__name__)

_MD5 = re.compile(r"^[0-9a-f]{32}$")
_CREDENTIALS_TTL = timedelta(minutes=5)  # ask botocore again this often: it refreshes expiring ones


@dataclass(frozen=True)
class _Sent:
    """What one request stored, as far as the server's answer lets us check it."""

    sha256: bytes
    md5: bytes | None
    ok: bool | None  # None: the answer carries nothing to check against (the object is read back)


class S3Objects:
    """Write content-addressed objects into an S3 store from many threads."""

    def __init__(self, store: Store, source: Source, options: StageOptions, buffers: BufferPool,
                 on_bytes: Callable[[int], None]) -> None:
        self.store, self.source, self.options, self.buffers, self.on_bytes = store, source, options, buffers, on_bytes
        self.client = store.s3_client(max_pool_connections=options.jobs + 4)
        self.bucket, _, prefix = store.root.partition("/")
        self.prefix = prefix.strip("/")
        self.objects = object_store(store, self.client, self.bucket)

    def key(self, sha256: str) -> str:
        """Return the object key of a hash."""
        return "/".join(p for p in (self.prefix, *object_key(sha256)) if p)

    def exists(self, blob: Blob) -> bool:
        """Tell whether the object is already stored with the right size."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(blob.sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return int(head["ContentLength"]) == blob.file.size

    def put(self, blob: Blob) -> int:
        """Upload a small file in one request; return the bytes stored (0 if it was already there)."""
        with self._boundary(blob):
            return self._put(blob)

    def put_large(self, blob: Blob, parts_pool: Executor) -> int:
        """Upload a large file as a multipart upload with parts in parallel; return the bytes stored."""
        with self._boundary(blob):
            return self._put_large(blob, parts_pool)

    @contextmanager
    def _boundary(self, blob: Blob) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError, BaseError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"{blob.file.rel}: upload to s3://{self.bucket}/{self.key(blob.sha256)} failed "
                             f"after retries: {reason}") from exc

    def _put(self, blob: Blob) -> int:
        file = blob.file
        with self.buffers.view(file.size) as data:
            if self.source.read_into(file, 0, data) != file.size or hashlib.sha256(data).hexdigest() != blob.sha256:
                raise DatasetError(f"{file.rel}: changed while staging; stage again")
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()  # S3's ETag, not security
            for attempt in range(self.options.verify_attempts):
                try:  # the first attempt is create-only; a retry overwrites with the same bytes
                    answer = obstore.put(self.objects, self.key(blob.sha256), data,
                                         mode="create" if attempt == 0 else "overwrite")
                except AlreadyExistsError:
                    return 0
                except GenericError as exc:  # a body the server refused (BadDigest) or a dropped connection
                    if attempt + 1 == self.options.verify_attempts and not _bad_digest(exc):
                        raise
                    log.warning("upload of %s failed (%s); sending it again", file.rel, str(exc).splitlines()[0])
                    continue
                if str(answer.get("e_tag") or "").strip('"') == md5 or self._read_back(blob.sha256):
                    self.on_bytes(file.size)
                    return file.size
                log.warning("object %s for %s failed its integrity check; uploading again", blob.sha256, file.rel)
        self._discard(blob)
        raise self._corrupted(file)

    def _put_large(self, blob: Blob, parts_pool: Executor) -> int:
        if self.exists(blob):
            return 0
        key = self.key(blob.sha256)
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                        ChecksumAlgorithm="SHA256")["UploadId"]
        futures: list[Future[tuple[dict[str, Any], _Sent]]] = []
        try:
            for number, (offset, length) in enumerate(_parts(blob.file.size, self.options.part_size), 1):
                futures.append(parts_pool.submit(self._part, blob, upload_id, number, offset, length))
            done = [f.result() for f in futures]
            created = self._complete(blob, upload_id, done)
        except BaseException:
            for future in futures:
                future.cancel()
            self._abort(key, upload_id)
            raise
        check_unchanged(blob.file)
        return blob.file.size if created else 0

    def _part(self, blob: Blob, upload_id: str, number: int, offset: int, length: int) -> tuple[dict[str, Any], _Sent]:
        with self.buffers.view(length) as data:
            if self.source.read_into(blob.file, offset, data) != length:
                raise DatasetError(f"{blob.file.rel}: changed while staging; stage again")
            digest = hashlib.sha256(data).digest()
            for _ in range(self.options.verify_attempts):
                try:
                    answer = self.client.upload_part(Bucket=self.bucket, Key=self.key(blob.sha256),
                                                     UploadId=upload_id, PartNumber=number, Body=_ViewBody(data),
                                                     ChecksumSHA256=_b64(digest))
                except ClientError as exc:
                    if _code(exc) == "BadDigest":
                        continue
                    raise
                sent = _check_answer(answer, data, digest)
                if sent.ok is not False:
                    self.on_bytes(length)
                    part = {"PartNumber": number, "ETag": answer["ETag"]}
                    if answer.get("ChecksumSHA256"):
                        part["ChecksumSHA256"] = answer["ChecksumSHA256"]
                    return part, sent
                log.warning("part %d of %s failed its integrity check; uploading it again", number, blob.file.rel)
        raise self._corrupted(blob.file)

    def _complete(self, blob: Blob, upload_id: str, done: list[tuple[dict[str, Any], _Sent]]) -> bool:
        try:
            answer = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key(blob.sha256), UploadId=upload_id, IfNoneMatch="*",
                MultipartUpload={"Parts": [part for part, _ in done]})
        except ClientError as exc:
            if _code(exc) == "PreconditionFailed":  # a concurrent staging stored it first: same bytes
                self._abort(self.key(blob.sha256), upload_id)
                return False
            raise
        count = f"-{len(done)}"  # S3's composite checksums: a hash of the parts' hashes, then '-<parts>'
        if answer.get("ChecksumSHA256"):
            composite = hashlib.sha256(b"".join(s.sha256 for _, s in done)).digest()
            ok = answer["ChecksumSHA256"] == _b64(composite) + count
        elif all(s.md5 is not None for _, s in done) and _MD5.match(answer.get("ETag", "").strip('"').split("-")[0]):
            composite = hashlib.md5(b"".join(s.md5 or b"" for _, s in done), usedforsecurity=False).digest()
            ok = answer["ETag"].strip('"') == composite.hex() + count
        else:
            ok = self._read_back(blob.sha256)
        if not ok:
            self._discard(blob)
            raise self._corrupted(blob.file)
        return True

    def _read_back(self, sha256: str) -> bool:
        """Hash the stored object (for servers that echo neither a checksum nor an MD5 ETag)."""
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        except ClientError as exc:
            if _code(exc) in {"404", "NoSuchKey"}:
                return False
            raise
        for chunk in body.iter_chunks(2**20):
            digest.update(chunk)
        return digest.hexdigest() == sha256

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:  # the upload stays invisible; a lifecycle rule reaps it
            log.warning("could not abort multipart upload %s of %s: %s", upload_id, key, exc)

    def _discard(self, blob: Blob) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(blob.sha256))
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not remove corrupted object %s: %s", self.key(blob.sha256), exc)

    def _corrupted(self, file: SourceFile) -> StoreError:
        return StoreError(f"{file.rel}: the store kept different bytes than were sent, "
                          f"{self.options.verify_attempts} times in a row (s3://{self.bucket}/{self.prefix}); "
                          "nothing was published, stage again")


class _ViewBody:
    """A seekable file over a borrowed part buffer: botocore rewinds it to retry, and nothing copies it whole."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view, 0

    def __len__(self) -> int:
        return len(self._view)

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = bytes(self._view[self._pos : end])
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos


def _check_answer(answer: dict[str, Any], data: memoryview, digest: bytes) -> _Sent:
    echoed = answer.get("ChecksumSHA256")
    if echoed:
        return _Sent(sha256=digest, md5=None, ok=echoed == _b64(digest))
    etag = str(answer.get("ETag", "")).strip('"')
    if _MD5.match(etag):
        md5 = hashlib.md5(data, usedforsecurity=False).digest()  # S3's ETag, not security
        return _Sent(sha256=digest, md5=md5, ok=etag == md5.hex())
    return _Sent(sha256=digest, md5=None, ok=None)


def _parts(size: int, part_size: int) -> list[tuple[int, int]]:
    part = max(part_size, -(-size // 10_000))  # S3 allows at most 10,000 parts
    return [(offset, min(part, size - offset)) for offset in range(0, size, part)]


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def object_store(store: Store, client: Any, bucket: str) -> S3Store:
    """Build an obstore S3 store that sends where ``client`` sends, with the store's credentials.

    botocore resolves the endpoint (``AWS_ENDPOINT_URL_S3``, the store's ``endpoint_url``) and the region;
    credentials come from :meth:`Store.s3_credentials` (botocore's chain, IRSA included) through a callback,
    so refreshable ones refresh.
    """
    credentials = store.s3_credentials()
    if credentials is None:
        raise StoreError(f"no AWS credentials found for {store.uri} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                         "a profile, or a web identity token)")

    def provide() -> Any:
        frozen = credentials.get_frozen_credentials()
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key, "token": frozen.token,
                "expires_at": datetime.now(UTC) + _CREDENTIALS_TTL}

    endpoint = str(client.meta.endpoint_url)
    config: dict[str, Any] = {"region": client.meta.region_name or "us-east-1", "checksum_algorithm": "sha256",
                              "unsigned_payload": True}  # the checksum header protects the body instead
    if not (urlsplit(endpoint).hostname or "").endswith(".amazonaws.com"):
        config.update(endpoint=endpoint, virtual_hosted_style_request=False)  # an S3-compatible server
    retries = client.meta.config.retries or {}
    attempts = int(retries.get("total_max_attempts") or retries.get("max_attempts", 2) + 1)
    options = {"allow_http": endpoint.startswith("http://"),
               "connect_timeout": timedelta(seconds=float(client.meta.config.connect_timeout)),
               "timeout": timedelta(seconds=max(60.0, float(client.meta.config.read_timeout)))}
    return S3Store(bucket, config=config, client_options=options,  # type: ignore[arg-type]
                   retry_config={"max_retries": max(0, attempts - 1), "retry_timeout": timedelta(minutes=3)},
                   credential_provider=provide)


def _bad_digest(exc: BaseException) -> bool:
    text = str(exc)
    return "BadDigest" in text or "XAmzContentChecksumMismatch" in text or "InvalidDigest" in text
