"""The HTTP routes: ``POST /v1`` (and ``/``) for task arrays, uploaded images, health, metrics.

A request goes (after :mod:`edgecap.server.guards`: Host, Origin, Content-Type): with keys
configured, the bearer key — or, without one, an ``authentication`` task opening the body's
first 4 KB — is checked before the rest of the body is read (401) → size limit (413) and read
deadline (408) → bounded JSON (:mod:`edgecap.server.limits`) → the handlers, which only see the
tasks of the caller's own key.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from edgecap.errors import AuthError, EdgecapError
from edgecap.protocol import Reply
from edgecap.server.auth import bearer_key
from edgecap.server.body import BodyReader, parse_body
from edgecap.server.handlers import Caller, Context, run_tasks, task_identity
from edgecap.server.limits import first_element
from edgecap.server.metrics import CONTENT_TYPE
from edgecap.server.schema import AuthenticationTask, parse_task
from edgecap.server.uploads import content_type_of

AUTH_PREFIX_BYTES = 4096  # where a body's authentication task must be, without a bearer key
TASK_TYPE_FIELD = re.compile(rb'"taskType"\s*:\s*"([^"\\]*)"')


def make_router(ctx: Context) -> APIRouter:
    router = APIRouter()

    async def post_tasks(request: Request) -> JSONResponse:
        reply = await answer(request, ctx)
        return JSONResponse(reply.body(), status_code=reply.status, headers=reply.headers())

    for path in ("/v1", "/"):
        router.add_api_route(
            path,
            post_tasks,
            methods=["POST"],
            summary="Run tasks (caption, imageUpload, getResponse, getTaskDetails, ping)",
            description="A JSON array of task objects; see docs/api.md and the schemas below.",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/TaskArray"}}
                    },
                }
            },
            include_in_schema=path == "/v1",
        )

    @router.get("/v1/images/{image_uuid}", summary="An uploaded image (a key when keys are set)")
    async def get_image(request: Request, image_uuid: str) -> Response:
        try:
            owner = require_key(request, ctx)
            path = await run_in_threadpool(
                ctx.uploads.path, image_uuid, parameter="imageUUID", owner=owner
            )
        except EdgecapError as exc:
            reply = Reply.of_error(exc, task_type="imageUpload", task_uuid=None)
            return JSONResponse(reply.body(), status_code=reply.status)
        return FileResponse(path, media_type=content_type_of(path))  # guards add nosniff

    @router.get("/healthz", summary="The server process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="The default model is loaded (503 until then)")
    async def readyz() -> JSONResponse:
        ready = ctx.service.ready
        return JSONResponse(
            {"status": "ready" if ready else "loading"}, status_code=200 if ready else 503
        )

    @router.get("/metrics", summary="Prometheus metrics (a key when keys are set)")
    async def metrics(request: Request) -> Response:
        try:
            require_key(request, ctx, public=ctx.settings.metrics_public)
        except EdgecapError as exc:
            reply = Reply.of_error(exc, task_type=None, task_uuid=None)
            return JSONResponse(reply.body(), status_code=reply.status)
        body = await run_in_threadpool(ctx.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    return router


async def answer(request: Request, ctx: Context) -> Reply:
    """The reply to one POSTed body.

    With API keys configured, a request is authenticated before its body is read: by its
    bearer key, or else by an ``authentication`` task that must be the first element of the
    body, within its first :data:`AUTH_PREFIX_BYTES` bytes.
    """
    key = bearer_key(request.headers.get("authorization"))
    settings = ctx.settings
    try:
        if key is not None:
            ctx.keys.check(key)  # a wrong bearer key: refused before the body is read
        reader = BodyReader(request, settings.max_body_bytes, settings.body_timeout_s)
        if key is None and ctx.keys.required:
            await _authenticate_prefix(reader, ctx)
        tasks = await parse_body(await reader.read())
    except EdgecapError as exc:
        return Reply.of_error(exc, task_type=None, task_uuid=None)
    everything = tasks
    if isinstance(tasks[0], dict) and tasks[0].get("taskType") == "authentication":
        try:
            key = parse_task(AuthenticationTask, tasks[0]).api_key
        except EdgecapError as exc:
            return _refuse_all(tasks, exc)
        tasks = tasks[1:]
    try:
        ctx.keys.check(key)
    except AuthError as exc:
        return _refuse_all(everything, exc)
    if not tasks:  # only the authentication: say it worked
        return Reply.of_item(_authenticated_item(everything[0]))
    caller = Caller(
        base_url=str(request.base_url).rstrip("/"), transport="rest", owner=ctx.owner_of(key)
    )
    return await run_tasks(tasks, ctx, caller)


async def _authenticate_prefix(reader: BodyReader, ctx: Context) -> None:
    """Without a bearer key the body must open with a valid authentication task: read only
    until its first element is complete, or shows another taskType, or 4 KB have come."""
    first: Any = None
    while first is None and not reader.done and len(reader.data) < AUTH_PREFIX_BYTES:
        await reader.read(len(reader.data) + 1)
        first = first_element(bytes(reader.data))
        named = TASK_TYPE_FIELD.search(bytes(reader.data[:AUTH_PREFIX_BYTES]))
        if first is None and named is not None and named.group(1) != b"authentication":
            break  # the first task is not an authentication: no need to wait for the rest
    if not (isinstance(first, dict) and first.get("taskType") == "authentication"):
        ctx.keys.check(None)  # raises MissingApiKey
        return
    api_key = first.get("apiKey")
    ctx.keys.check(api_key if isinstance(api_key, str) else "\0")


def require_key(request: Request, ctx: Context, *, public: bool = False) -> str | None:
    """The owner identity of a GET's bearer key; raises AuthError when keys are configured
    and the key is missing or wrong (unless ``public``)."""
    key = bearer_key(request.headers.get("authorization"))
    if not public:
        ctx.keys.check(key)
    return ctx.owner_of(key)


def _refuse_all(tasks: list[Any], exc: EdgecapError) -> Reply:
    """The same authentication error for every task of the request."""
    reply = Reply()
    for raw in tasks or [None]:
        task_type, task_uuid = task_identity(raw)
        reply.add_error(exc, task_type=task_type, task_uuid=task_uuid)
    return reply


def _authenticated_item(task: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"taskType": "authentication"}
    if isinstance(task.get("taskUUID"), str):
        item["taskUUID"] = task["taskUUID"]
    return item
