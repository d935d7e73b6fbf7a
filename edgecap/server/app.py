"""The app factory: ``create_app(settings, service, registry)`` wires the API together.

The collaborators come in as arguments (a real or a fake :class:`TaskService`, a
:class:`Registry`); nothing is read from globals or the environment. The app starts the
service when it starts serving and stops it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool

from edgecap import __version__
from edgecap.config import Settings
from edgecap.protocol import Reply, unexpected_error
from edgecap.registry import Registry
from edgecap.runtime.service import TaskService
from edgecap.server.auth import ApiKeys
from edgecap.server.connections import header_deadline_protocol
from edgecap.server.guards import Guards
from edgecap.server.handlers import Context
from edgecap.server.metrics import Metrics
from edgecap.server.openai import make_openai_router
from edgecap.server.page import make_page_router
from edgecap.server.routes import make_router
from edgecap.server.schema import TASK_MODELS
from edgecap.server.stream import stream_caption
from edgecap.server.uploads import UploadStore
from edgecap.server.ws import Connection, Sessions

logger = logging.getLogger(__name__)

UPLOAD_PURGE_INTERVAL_S = 3600.0
DESCRIPTION = (
    "A local, Runware-compatible caption API. POST a JSON array of tasks to /v1, or send the "
    "same tasks over the WebSocket at /v1. See docs/api.md."
)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings the app's bounds rely on (``serve`` and the tests use them)."""
    return {
        "ws_max_size": settings.max_body_bytes,
        "ws_per_message_deflate": False,  # a small compressed frame must not inflate
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": 5,
        "h11_max_incomplete_event_size": 64 * 1024,  # request line + headers
        "http": header_deadline_protocol(settings.header_timeout_s),  # ... within a deadline
    }


def create_app(settings: Settings, service: TaskService, registry: Registry) -> FastAPI:
    """The API app, serving ``service`` (started and stopped with the app)."""
    uploads = UploadStore(settings)
    ctx = Context(
        settings, service, registry, uploads, Metrics(service), ApiKeys(settings.api_keys)
    )
    sessions = Sessions(per_key=settings.ws_sessions_per_key, anonymous=settings.max_connections)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        purger = asyncio.create_task(_purge_uploads_periodically(uploads))
        try:
            yield
        finally:
            purger.cancel()
            await run_in_threadpool(service.stop)

    app = FastAPI(title="edgecap", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.include_router(make_router(ctx))
    app.include_router(make_openai_router(ctx))
    app.include_router(make_page_router(ctx))

    @app.post("/v1/stream", summary="One caption task, answered as server-sent events")
    async def stream(request: Request) -> Response:
        return await stream_caption(request, ctx)

    app.add_middleware(Guards, settings=settings)  # Host, Origin, Content-Type, nosniff

    @app.websocket("/v1")
    async def websocket(socket: WebSocket) -> None:
        await Connection(socket, ctx, sessions).serve()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        reply = Reply.of_error(unexpected_error(exc), task_type=None, task_uuid=None)
        return JSONResponse(reply.body(), status_code=reply.status)

    app.openapi = lambda: _openapi_with_tasks(app)  # type: ignore[method-assign]
    return app


async def _purge_uploads_periodically(uploads: UploadStore) -> None:
    while True:
        try:
            purged = await run_in_threadpool(uploads.purge_unused)
            if purged:
                logger.info("Deleted %d uploaded image(s) unused for their retention time", purged)
        except OSError as exc:
            logger.warning("Could not purge old uploads: %s", exc)
        await asyncio.sleep(UPLOAD_PURGE_INTERVAL_S)


def _openapi_with_tasks(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the task schemas that ``POST /v1`` accepts."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, defs = models_json_schema(
            [(model, "validation") for model in TASK_MODELS],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.get("$defs", {}))
        components["TaskArray"] = {
            "type": "array",
            "minItems": 1,
            "items": {
                "oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in TASK_MODELS]
            },
        }
        app.openapi_schema = schema
    return app.openapi_schema
