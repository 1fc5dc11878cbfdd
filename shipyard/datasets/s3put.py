"""A lean PutObject for small objects: SigV4 signed by hand, sent on a kept-alive connection per thread.

botocore spends ~0.5 ms of Python per request (event hooks, endpoint rules, user agent, parsing) under
the GIL; for 10 KB objects on a small machine that, not the network, bounds staging. This path sends one
kind of request, a create-only checksummed PUT, and resolves everything else once from the boto3 client
staging already built, so it follows the same configuration: credentials (botocore's chain, frozen per
request so that refreshable ones still refresh), region, endpoint and addressing style (botocore
resolves the URL of one PutObject that is stopped before it is sent, so path or virtual-host style is its
own choice), timeouts and retry attempts.

Failures look like botocore's, so callers handle both paths alike: an S3 error answer raises
``ClientError`` with its code; 5xx, throttling (``SlowDown``, 429), dropped connections and timeouts are
retried with botocore's standard-mode backoff (``rand(0, 1) * min(2 ** (attempt - 1), 20)`` seconds),
then raise. An answer this path cannot act on (a redirect to another region) raises :class:`Unsupported`:
the caller sends that object, and the rest, through botocore.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import random
import re
import socket
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote, urlsplit

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from botocore.httpsession import where
from urllib3.util.wait import wait_for_read

_RETRY_STATUS = {429, 500, 502, 503, 504}
_RETRY_CODES = {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "Throttling",
                "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
                "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled", "SlowDown"}
_REDIRECT_CODES = {"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed",
                   "IllegalLocationConstraintException"}
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_MAX_BACKOFF = 20.0


class Unsupported(Exception):
    """The server answered in a way only botocore handles (a redirect to the bucket's region)."""


@dataclass(frozen=True)
class _Target:
    """Where PUTs go: the connection and the path every key is appended to."""

    scheme: str
    host: str
    port: int
    host_header: str
    base_path: str


class SmallPuts:
    """Send create-only, checksummed PUTs of small bodies into one bucket, from many threads."""

    def __init__(self, credentials: Any, region: str, target: _Target, attempts: int,
                 timeouts: tuple[float, float]) -> None:
        self._credentials, self._region, self._target = credentials, region, target
        self._attempts, self._timeouts = max(1, attempts), timeouts
        self._local = threading.local()
        self._context = ssl.create_default_context(cafile=where()) if target.scheme == "https" else None

    @classmethod
    def for_client(cls, client: Any, bucket: str) -> SmallPuts | None:
        """Mirror a boto3 S3 client's configuration, or return None where only botocore can send."""
        try:
            # The client's own credentials, as botocore's chain resolved them (a private accessor, so guarded).
            credentials = client._get_credentials()
        except AttributeError:
            return None
        config = client.meta.config
        if credentials is None or config.proxies or config.signature_version not in {None, "s3v4"}:
            return None
        target = _target(client, bucket)
        if target is None:
            return None
        retries = config.retries or {}
        attempts = int(retries.get("total_max_attempts") or retries.get("max_attempts", 2) + 1)
        return cls(credentials, client.meta.region_name or "us-east-1", target, attempts,
                   (float(config.connect_timeout), float(config.read_timeout)))

    def put(self, key: str, body: memoryview, sha256: str, checksum: str, create_only: bool) -> dict[str, str]:
        """PUT ``body`` (whose SHA-256 is ``sha256``, hex) at ``key``; return the ETag and echoed checksum."""
        path = self._target.base_path + quote(key, safe="/~")
        for attempt in range(1, self._attempts + 1):
            last = attempt == self._attempts
            try:
                status, headers, data = self._send(path, body, sha256, checksum, create_only, attempt)
            except TimeoutError as exc:
                self._drop()
                if last:
                    raise ReadTimeoutError(endpoint_url=self._url(path), error=exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if last:
                    raise ConnectionClosedError(endpoint_url=self._url(path), error=exc) from exc
            else:
                if status < 300:
                    return {"ETag": headers.get("etag", ""), "ChecksumSHA256": headers.get("x-amz-checksum-sha256", "")}
                code, message = _error(status, data)
                if status in {301, 307} or code in _REDIRECT_CODES:
                    raise Unsupported(f"{code or status} for {self._url(path)}")
                if last or not (status in _RETRY_STATUS or code in _RETRY_CODES):
                    raise ClientError({"Error": {"Code": code, "Message": message},
                                       "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
            time.sleep(random.random() * min(2.0 ** (attempt - 1), _MAX_BACKOFF))  # noqa: S311 (jitter)
        raise AssertionError("unreachable")

    def _send(self, path: str, body: memoryview, sha256: str, checksum: str, create_only: bool,
              attempt: int) -> tuple[int, dict[str, str], bytes]:
        signed = {"host": self._target.host_header, "x-amz-checksum-sha256": checksum,
                  "x-amz-content-sha256": sha256,  # the content address is the payload hash: signed for free
                  "x-amz-date": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")}
        if create_only:
            signed["if-none-match"] = "*"
        frozen = self._credentials.get_frozen_credentials()
        if frozen.token:
            signed["x-amz-security-token"] = frozen.token
        headers = {**signed, "authorization": _authorization(frozen, self._region, path, signed),
                   "amz-sdk-request": f"attempt={attempt}; max={self._attempts}", "user-agent": "shipyard-staging"}
        conn = self._connection()
        conn.request("PUT", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            target = self._target
            conn = (http.client.HTTPSConnection(target.host, target.port, timeout=self._timeouts[0],
                                                context=self._context) if self._context is not None
                    else http.client.HTTPConnection(target.host, target.port, timeout=self._timeouts[0]))
            self._local.conn = conn
        if conn.sock is not None and wait_for_read(conn.sock, timeout=0.0):  # the server closed it while idle
            conn.close()
        if conn.sock is None:  # new, or closed after a 'Connection: close' answer
            conn.connect()
            sock = cast(socket.socket, conn.sock)  # typeshed does not know connect() sets it
            # Headers and body go out in two writes: without TCP_NODELAY, Nagle holds the body for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self._timeouts[1])
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _url(self, path: str) -> str:
        return f"{self._target.scheme}://{self._target.host_header}{path}"


def _target(client: Any, bucket: str) -> _Target | None:
    """Find where the client sends a PUT into ``bucket``; None if it would go through a proxy."""
    url = urlsplit(_put_url(client, bucket, "k"))
    if not url.hostname or not url.path.endswith("/k") or url.query:
        return None
    if urllib.request.getproxies().get(url.scheme) and not urllib.request.proxy_bypass(url.hostname):
        return None
    default = 443 if url.scheme == "https" else 80
    return _Target(url.scheme, url.hostname, url.port or default, url.netloc.rsplit("@", 1)[-1], url.path[:-1])


def _put_url(client: Any, bucket: str, key: str) -> str:
    """Let botocore resolve a PutObject's URL (endpoint rules, addressing style), then stop it before sending.

    A ``before-call`` handler that returns a response ends the call there: botocore's Stubber works this way.
    """
    seen: list[str] = []

    def capture(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        seen.append(params["url"])
        return AWSResponse(params["url"], 200, {}, None), {}

    event, unique_id = "before-call.s3.PutObject", f"shipyard-put-url-{id(seen)}"
    client.meta.events.register_first(event, capture, unique_id=unique_id)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    finally:
        client.meta.events.unregister(event, unique_id=unique_id)
    return seen[0]


def _authorization(frozen: Any, region: str, path: str, signed: dict[str, str]) -> str:
    """Return the SigV4 Authorization header for a PUT with these (lower-case) signed headers."""
    stamp = signed["x-amz-date"]
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    names = sorted(signed)
    canonical = "\n".join(["PUT", path, "", *(f"{n}:{signed[n]}" for n in names), "", ";".join(names),
                           signed["x-amz-content-sha256"]])
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"AWS4{frozen.secret_key}".encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"AWS4-HMAC-SHA256 Credential={frozen.access_key}/{scope}, SignedHeaders={';'.join(names)}, "
            f"Signature={signature}")


def _error(status: int, data: bytes) -> tuple[str, str]:
    """Return an S3 error answer's code and message (from its XML, else from the status)."""
    code, message = _CODE.search(data), _MESSAGE.search(data)
    fallback = {412: "PreconditionFailed", 404: "NoSuchBucket", 403: "AccessDenied"}.get(status, str(status))
    return (code.group(1).decode() if code else fallback), (message.group(1).decode() if message else "")
