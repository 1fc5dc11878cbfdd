"""The inference app: MLflow's scoring protocol, plus readiness, metrics, and token-guarded hot swap.

Endpoints:
    POST /invocations          MLflow scoring format (inputs, instances, dataframe_split/records, CSV)
    GET  /ping                 200 once a model serves (MLflow's health check)
    GET  /health               200 only after the model loaded and answered its input example; else 503
    GET  /livez                200 while the process runs (liveness, whatever the model does)
    GET  /version              model name, version, URI, MLflow run id, dataset and dataset version
    GET  /metrics              Prometheus text format
    POST /admin/candidate      load and warm a version beside the live one (token)
    POST /admin/candidate/invocations   predict with the candidate (token)
    POST /admin/promote        the candidate becomes live; the old version is released (token)
    DELETE /admin/candidate    drop the candidate (token)

The app imports neither Prefect nor the rollout code: it is what runs in the inference pod.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shipyard.serving.batching import Batcher
from shipyard.serving.metrics import Metrics
from shipyard.serving.model import BadInput, Served, load, preload

log = logging.getLogger(__name__)

JSON = "application/json"


class RequestTooLarge(Exception):
    """The body is over the size cap."""


@dataclass
class Slot:
    """A loaded version and the batcher of its forward passes."""

    served: Served
    batcher: Batcher | None

    @property
    def version_header(self) -> bytes:
        """Return the model version as the ``x-model-version`` header value."""
        return self.served.version.encode("latin-1")


@dataclass
class Server:
    """Everything the routes share: the live slot, a candidate, the caps, the token, the metrics."""

    max_bytes: int
    timeout: float
    token: str | None
    live: Slot | None = None
    candidate: Slot | None = None
    previous: dict[str, str | None] | None = None
    failed: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    forward_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "forward"))
    admin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def slot(self, served: Served) -> Slot:
        """Wrap a loaded version, with a batcher when it has a direct tensor path."""
        tensor = served.tensor
        return Slot(served, Batcher(tensor.forward, self.forward_pool) if tensor else None)

    async def predict(self, slot: Slot, body: bytes, content_type: str) -> tuple[int, bytes, int]:
        """Answer one scoring request: (status, body, rows predicted)."""
        try:
            return await asyncio.wait_for(self._predict(slot, body, content_type), self.timeout)
        except TimeoutError:
            return 504, _error("DEADLINE_EXCEEDED", f"prediction took longer than {self.timeout:g}s"), 0
        except BadInput as exc:
            return 400, _error("BAD_REQUEST", str(exc)), 0

    async def _predict(self, slot: Slot, body: bytes, content_type: str) -> tuple[int, bytes, int]:
        rows = _tensor_rows(body, content_type) if slot.batcher else None
        if rows is not None and slot.batcher is not None and slot.served.tensor is not None:
            array = slot.served.tensor.check(rows)
            try:
                out = await slot.batcher.predict(array)
            except Exception as exc:  # noqa: BLE001 - a model bug, answered as 500 with its message
                log.warning("prediction failed: %s: %s", type(exc).__name__, exc)
                return 500, _error("INTERNAL_ERROR", f"prediction failed: {type(exc).__name__}: {exc}"), 0
            return 200, orjson.dumps({"predictions": out}, option=orjson.OPT_SERIALIZE_NUMPY), array.shape[0]
        return await asyncio.to_thread(_mlflow_invocations, slot.served, body, content_type)


def _tensor_rows(body: bytes, content_type: str) -> Any | None:
    """Return the rows of ``{"inputs": [...]}`` / ``{"instances": [...]}``; None for every other format."""
    if not content_type.startswith(JSON) or ("charset" in content_type and "utf-8" not in content_type.lower()):
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"the body is not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and len(doc) == 1:
        rows = doc.get("inputs", doc.get("instances"))
        if isinstance(rows, list):
            return rows
    return None


def _mlflow_invocations(served: Served, body: bytes, content_type: str) -> tuple[int, bytes, int]:
    """MLflow's own scoring function: every format it knows, answered exactly as it answers."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    try:
        result = scoring_server.invocations(  # type: ignore[no-untyped-call]
            body, content_type, served.pyfunc, served.input_schema)
    except MlflowException as exc:
        # Answered in one line, without MLflow's stack trace or its echo of the request's data; the trace
        # stays in the server's log.
        status = int(exc.get_http_status_code())  # type: ignore[no-untyped-call]
        log.debug("request refused with HTTP %d: %s\n%s", status, exc.message,
                  getattr(exc, "json_kwargs", {}).get("stack_trace", ""))
        message = _mlflow_message(str(exc.message))
        cause = _cause(str(getattr(exc, "json_kwargs", {}).get("stack_trace") or ""))
        if cause and cause not in message:  # the model's own error, e.g. "ValueError: matmul: shapes do not align"
            message = f"{message} ({cause})"
        return status, _error(str(exc.error_code), message), 0
    payload = result.response.encode() if isinstance(result.response, str) else result.response
    if int(result.status) != 200 and not payload.lstrip().startswith(b"{"):  # MLflow's plain-text refusals (415)
        return int(result.status), _error("BAD_REQUEST", _mlflow_message(payload.decode(errors="replace"))), 0
    return int(result.status), payload, 0


def _mlflow_message(message: str) -> str:
    """Return an MLflow scoring error as one line, without the copy of the request's data it starts with."""
    head, sep, error = message.partition("\nError: ")
    if sep and head.startswith("Failed to predict data"):
        message = f"the inputs do not fit the model's signature: {error}"
    message = " ".join(message.split())
    message = re.sub(r"Failed to enforce schema of data '.*?' with schema", "Failed to enforce schema", message)
    return message if len(message) <= 500 else message[:497] + "..."


def _cause(trace: str) -> str:
    """Return the exception line that ends a stack trace (one line, at most 300 characters), or ''."""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error_code": code, "message": message})


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=JSON)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Read the body, refusing more than ``max_bytes`` (checked on the header first, then while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def warm(server: Server, slot: Slot, example: Any) -> list[Any]:
    """Answer the input example through the request path; raise ValueError with the reason if that fails."""
    if example is None:
        raise ValueError("the model has no input example to warm up on")
    body = orjson.dumps({"inputs": example}, option=orjson.OPT_SERIALIZE_NUMPY)
    status, payload, _ = await server.predict(slot, body, JSON)
    if status != 200:
        raise ValueError(f"warm-up prediction answered HTTP {status}: {_reason(payload)}")
    predictions: list[Any] = orjson.loads(payload)["predictions"]
    return predictions


def _reason(payload: bytes) -> str:
    """Return an error answer's message, with the exception line of MLflow's stack trace when it has one."""
    try:
        doc = orjson.loads(payload)
        message, trace = str(doc.get("message", "")), str(doc.get("stack_trace") or "").strip()
    except (orjson.JSONDecodeError, AttributeError):
        return payload[:300].decode(errors="replace")
    last = trace.splitlines()[-1] if trace else ""
    return f"{message[:300]} ({last[:300]})" if last else message[:300]


def create_app(model_uri: str | None = None, model_name: str = "", model_version: str = "", *,
               max_bytes: int = 10 * 1024 * 1024, timeout: float = 10.0, token: str | None = None) -> App:
    """Return the app; with ``model_uri`` it loads and warms that version at startup."""
    from shipyard.serving.admin import admin_routes

    server = Server(max_bytes=max_bytes, timeout=timeout, token=token or None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = None
        if model_uri:
            loading = asyncio.get_running_loop().create_task(_load_initial(server, model_uri, model_name,
                                                                           model_version))
        else:  # waiting for a rollout: import the model runtime meanwhile
            threading.Thread(target=preload, name="preload", daemon=True).start()
        yield
        if loading is not None:
            loading.cancel()
        server.forward_pool.shutdown(wait=False, cancel_futures=True)

    async def livez(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def metrics(request: Request) -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/ping", partial(ping, server), methods=["GET"]),
        Route("/health", partial(health, server), methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/version", partial(version, server), methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *admin_routes(server),
    ]
    return App(server, Starlette(routes=routes, lifespan=lifespan))


async def _load_initial(server: Server, model_uri: str, model_name: str, model_version: str) -> None:
    try:
        slot = server.slot(await asyncio.to_thread(load, model_uri, model_name, model_version))
        await warm(server, slot, slot.served.pyfunc.input_example)
    except Exception as exc:  # noqa: BLE001 - a pod that cannot serve must exit, so it restarts visibly
        log.error("cannot serve %s: %s: %s", model_uri, type(exc).__name__, exc)
        server.failed = f"{type(exc).__name__}: {exc}"
        os._exit(3)
    server.live = slot
    log.info("serving %s", model_uri)


class App:
    """The ASGI app: ``POST /invocations`` handled directly (no routing or request objects), the rest by Starlette."""

    def __init__(self, server: Server, routes: Starlette) -> None:
        self.server = server
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/invocations" and scope["method"] == "POST":
            await self.invocations(scope, receive, send)
        else:
            await self.routes(scope, receive, send)

    async def invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Score one request with the live version."""
        started = time.perf_counter()
        server, slot = self.server, self.server.live
        headers = dict(scope["headers"])
        rows, version = 0, b""
        if slot is None:
            status, payload = 503, _error("TEMPORARILY_UNAVAILABLE", "no model is loaded yet")
        else:
            version = slot.version_header
            try:
                body = await _receive_body(receive, server.max_bytes, headers.get(b"content-length"))
            except RequestTooLarge:
                status, payload = 413, _error("REQUEST_TOO_LARGE", f"the body is over {server.max_bytes} bytes")
            else:
                content_type = headers.get(b"content-type", b"application/json").decode("latin-1")
                status, payload, rows = await server.predict(slot, body, content_type)
            server.metrics.observe(slot.served.info["model_name"] or "", slot.served.version, status,
                                   time.perf_counter() - started, rows)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload)),
                                (b"x-model-version", version)]})
        await send({"type": "http.response.body", "body": payload})


async def _receive_body(receive: Receive, max_bytes: int, declared: bytes | None) -> bytes:
    """Read a request body of at most ``max_bytes`` (checked on Content-Length first, then while reading)."""
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def ping(server: Server, request: Request) -> Response:
    """Answer 200 once a model serves."""
    return Response("\n", 200 if server.live else 503, media_type=JSON)


async def health(server: Server, request: Request) -> Response:
    """Answer 200 only once a model was loaded and answered its input example."""
    if server.live is None:
        state = {"status": "failed", "reason": server.failed} if server.failed else {"status": "loading"}
        return _json(state, 503)
    return _json({"status": "ready", "model_version": server.live.served.version})


async def version(server: Server, request: Request) -> Response:
    """Say which version serves, from which MLflow run and dataset version, and which one served before."""
    if server.live is None:
        return _json({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "no model is loaded yet"}, 503)
    previous = server.previous or {}
    return _json({**server.live.served.info, "previous_model_version": previous.get("model_version")})


def authorized(server: Server, request: Request) -> Response | None:
    """Return an error response unless the request carries the server's token."""
    if not server.token:
        return _json({"error_code": "PERMISSION_DENIED", "message": "model swaps are disabled on this server"}, 403)
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not given or not hmac.compare_digest(given.encode(), server.token.encode()):
        return _json({"error_code": "UNAUTHENTICATED", "message": "a valid bearer token is required"}, 401)
    return None


__all__ = ["Server", "Slot", "authorized", "create_app", "read_body", "warm"]
