"""The inference app: ``POST /invocations`` (MLflow scoring format), ``GET /ping``, ``GET /version``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

log = logging.getLogger(__name__)


def create_app(model_uri: str, model_name: str, model_version: str, tracking_uri: str | None = None) -> FastAPI:
    """Load the model once and return an app serving it."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    input_schema = model.metadata.get_input_schema()
    info: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "model_uri": model_uri,
        "run_id": model.metadata.run_id,
        "mlflow_version": mlflow.__version__,
    }
    app = FastAPI(title="Shipyard inference", version=model_version)

    @app.get("/ping")
    async def ping() -> Response:
        return Response(content="\n", status_code=200, media_type="application/json")

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse(info)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json")
        try:
            result = await asyncio.to_thread(scoring_server.invocations, body, content_type, model, input_schema)
        except MlflowException as exc:
            return Response(content=exc.serialize_as_json(),  # type: ignore[no-untyped-call]
                            status_code=exc.get_http_status_code(),  # type: ignore[no-untyped-call]
                            media_type="application/json")
        return Response(content=result.response, status_code=result.status, media_type=result.mimetype)

    return app
