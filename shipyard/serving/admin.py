"""Token-guarded hot swap: load and warm a candidate beside the live version, then switch in one step.

The live version keeps answering while the candidate loads and warms on other threads. Promotion is
one assignment on the event loop, so every request is answered by exactly one version, old or new;
requests already running on the old version finish on it, then it is released.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.serving.model import load

if TYPE_CHECKING:
    from shipyard.serving.app import Server

log = logging.getLogger(__name__)


def admin_routes(server: Server) -> list[Route]:
    """Return the /admin routes bound to ``server``."""

    async def candidate(request: Request) -> Response:
        return await _guarded(server, request, _stage)

    async def candidate_invocations(request: Request) -> Response:
        return await _guarded(server, request, _candidate_predict, lock=False)

    async def promote(request: Request) -> Response:
        return await _guarded(server, request, _promote)

    async def drop(request: Request) -> Response:
        return await _guarded(server, request, _drop)

    return [
        Route("/admin/candidate", candidate, methods=["POST"]),
        Route("/admin/candidate", drop, methods=["DELETE"]),
        Route("/admin/candidate/invocations", candidate_invocations, methods=["POST"]),
        Route("/admin/promote", promote, methods=["POST"]),
    ]


async def _guarded(server: Server, request: Request, handler: Any, lock: bool = True) -> Response:
    from shipyard.serving.app import _json, authorized

    denied = authorized(server, request)
    if denied is not None:
        return denied
    if not lock:
        status, doc = await handler(server, request)
        return Response(doc, status, media_type="application/json") if isinstance(doc, bytes) else _json(doc, status)
    if server.admin_lock.locked():
        return _json({"error_code": "CONFLICT", "message": "another model swap is in progress"}, 409)
    async with server.admin_lock:
        status, doc = await handler(server, request)
    return _json(doc, status)


async def _stage(server: Server, request: Request) -> tuple[int, Any]:
    """Load ``model_uri`` as the candidate and answer ``example`` with it (its warm-up)."""
    from shipyard.serving.app import read_body, warm

    try:
        spec = orjson.loads(await read_body(request, server.max_bytes))
        uri, name, version = str(spec["model_uri"]), str(spec["model_name"]), str(spec["model_version"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return 400, {"error_code": "BAD_REQUEST", "message": f"expected model_uri, model_name, model_version: {exc}"}
    server.candidate = None  # a rollout that staged it and has not promoted yet gets 409 when it tries
    try:
        served = await asyncio.to_thread(load, uri, name, version)
    except Exception as exc:  # noqa: BLE001 - any load failure is the candidate's, reported to the caller
        log.warning("candidate %s failed to load: %s: %s", uri, type(exc).__name__, exc)
        return 422, {"error_code": "LOAD_FAILED", "message": f"{uri} failed to load: {type(exc).__name__}: {exc}"}
    slot = server.slot(served)
    example = spec.get("example") or served.pyfunc.input_example
    try:
        predictions = await warm(server, slot, example)
    except ValueError as exc:
        return 422, {"error_code": "WARM_UP_FAILED", "message": f"{uri}: {exc}"}
    server.candidate = slot
    log.info("candidate %s loaded and warmed (%s path)", uri, served.info["path"])
    return 200, {"candidate": served.info, "example": example, "predictions": predictions}


async def _candidate_predict(server: Server, request: Request) -> tuple[int, Any]:
    from shipyard.serving.app import _error, read_body

    if server.candidate is None:
        return 404, _error("NOT_FOUND", "no candidate is loaded")
    body = await read_body(request, server.max_bytes)
    status, payload, _ = await server.predict(server.candidate, body, request.headers.get("content-type", "json"))
    return status, payload


async def _mismatch(server: Server, request: Request) -> tuple[int, Any] | None:
    """Refuse to act on a candidate another rollout staged meanwhile (the body names the one meant)."""
    try:
        meant = orjson.loads(await request.body() or b"{}").get("model_uri")
    except (orjson.JSONDecodeError, AttributeError):
        return 400, {"error_code": "BAD_REQUEST", "message": "expected a JSON object with model_uri"}
    if server.candidate is None:
        return 404, {"error_code": "NOT_FOUND", "message": "no candidate is loaded"}
    staged = server.candidate.served.info["model_uri"]
    if meant != staged:
        return 409, {"error_code": "CONFLICT", "message": f"the candidate is {staged}, not {meant} "
                     "(another rollout replaced it)"}
    return None


async def _promote(server: Server, request: Request) -> tuple[int, Any]:
    """Make the candidate live in one step; the old version is released once its requests finish."""
    refused = await _mismatch(server, request)
    new = server.candidate
    if refused is not None or new is None:
        return refused or (404, {"error_code": "NOT_FOUND", "message": "no candidate is loaded"})
    old, server.live, server.candidate = server.live, new, None
    server.previous = old.served.info if old else server.previous
    server.failed = None
    was = old.served.info["model_uri"] if old else "nothing"
    log.info("now serving %s (was %s)", new.served.info["model_uri"], was)
    return 200, {"live": new.served.info, "previous": server.previous}


async def _drop(server: Server, request: Request) -> tuple[int, Any]:
    refused = await _mismatch(server, request)
    if refused is not None:
        return refused
    dropped, server.candidate = server.candidate, None
    return 200, {"dropped": dropped.served.info if dropped else None}
