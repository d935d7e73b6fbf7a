"""The HTTP routes: ``POST /v1`` (and ``/``) for task arrays, uploaded images, health, metrics.

A request goes: a bearer key, if the ``Authorization: Bearer`` header carries one, is checked
before the body is read (401) → size limit (413) → JSON → task array (a single object is
accepted too, at most 64 tasks) → API key (the bearer key, or a first ``authentication``
element) → the handlers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from edgecap.errors import AuthError, EdgecapError
from edgecap.protocol import Reply
from edgecap.server.auth import bearer_key
from edgecap.server.body import parse_body, read_body
from edgecap.server.handlers import Caller, Context, run_tasks, task_identity
from edgecap.server.metrics import CONTENT_TYPE
from edgecap.server.schema import AuthenticationTask, parse_task
from edgecap.server.uploads import content_type_of


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

    @router.get("/v1/images/{image_uuid}", summary="An uploaded image")
    async def get_image(image_uuid: str) -> Response:
        try:
            path = await run_in_threadpool(ctx.uploads.path, image_uuid, parameter="imageUUID")
        except EdgecapError as exc:
            reply = Reply.of_error(exc, task_type="imageUpload", task_uuid=None)
            return JSONResponse(reply.body(), status_code=reply.status)
        return FileResponse(path, media_type=content_type_of(path))

    @router.get("/healthz", summary="The server process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="The default model is loaded (503 until then)")
    async def readyz() -> JSONResponse:
        ready = ctx.service.ready
        return JSONResponse(
            {"status": "ready" if ready else "loading"}, status_code=200 if ready else 503
        )

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        body = await run_in_threadpool(ctx.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    return router


async def answer(request: Request, ctx: Context) -> Reply:
    """The reply to one POSTed body."""
    key = bearer_key(request.headers.get("authorization"))
    if key is not None and ctx.keys.required:
        try:  # a wrong bearer key is refused before the body is read, let alone parsed
            ctx.keys.check(key)
        except AuthError as exc:
            return Reply.of_error(exc, task_type=None, task_uuid=None)
    try:
        body = await read_body(request, ctx.settings.max_body_bytes)
        tasks = await parse_body(body)
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
    caller = Caller(base_url=str(request.base_url).rstrip("/"), transport="rest")
    return await run_tasks(tasks, ctx, caller)


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
