"""``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI's API over the same service.

Same gatekeeping as the caption API: the bearer key is checked before the body is read (401),
the body is bounded by ``max_body_bytes`` (413), image loading shares the caption semaphore,
and the job goes through :class:`TaskService` — the same queue (429 when full), engine and
limits. A request waits at most ``sync_timeout_s`` for its answer (504 after that).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from edgecap.errors import BadRequestBody, EdgecapError, InvalidParameter, UnknownModel
from edgecap.records import CaptionResult
from edgecap.server.auth import bearer_key
from edgecap.server.body import THREADPOOL_JSON_BYTES, read_body
from edgecap.server.handlers import Context
from edgecap.server.limits import decode_json
from edgecap.server.openai.convert import make_job
from edgecap.server.openai.replies import Completion, error_response, sse_events
from edgecap.server.openai.schema import ChatCompletionRequest, parse_request, request_schema

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": request_schema()}},
    }
}


def make_openai_router(ctx: Context) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    @router.post(
        "/chat/completions",
        summary="OpenAI-compatible chat completion (text and one image; stream: true for SSE)",
        openapi_extra=OPENAPI_BODY,
    )
    async def chat_completions(request: Request) -> Response:
        try:
            key = bearer_key(request.headers.get("authorization"))
            ctx.keys.check(key)
            chat = parse_request(await _json(request, ctx))
            return await _answer(chat, ctx, ctx.owner_of(key))
        except EdgecapError as exc:
            return error_response(exc)

    @router.get("/models", summary="The models this server answers for (OpenAI's list)")
    async def list_models(request: Request) -> Response:
        try:
            ctx.keys.check(bearer_key(request.headers.get("authorization")))
            names = await run_in_threadpool(model_names, ctx)
        except EdgecapError as exc:
            return error_response(exc)
        return JSONResponse({"object": "list", "data": [_model_object(n) for n in names]})

    @router.get("/models/{model_id:path}", summary="One model (OpenAI's retrieve)")
    async def get_model(model_id: str, request: Request) -> Response:
        try:
            ctx.keys.check(bearer_key(request.headers.get("authorization")))
            names = await run_in_threadpool(model_names, ctx)
            if model_id not in names:
                raise UnknownModel(
                    f"No model {model_id!r} here; GET /v1/models lists them.", parameter="model"
                )
        except EdgecapError as exc:
            return error_response(exc)
        return JSONResponse(_model_object(model_id))

    return router


async def _json(request: Request, ctx: Context) -> Any:
    body = await read_body(request, ctx.settings.max_body_bytes, ctx.settings.body_timeout_s)
    try:
        if len(body) > THREADPOOL_JSON_BYTES:
            return await run_in_threadpool(decode_json, body)
        return decode_json(body)
    except BadRequestBody:
        raise InvalidParameter(
            "The body is not valid JSON. Send a UTF-8 JSON object "
            '{"model": "...", "messages": [...]} with Content-Type: application/json.',
            parameter="body",
        ) from None


async def _answer(chat: ChatCompletionRequest, ctx: Context, owner: str | None) -> Response:
    async with ctx.caption_slots:
        job = await run_in_threadpool(make_job, chat, ctx.job_inputs, owner)
    completion = Completion(
        id=f"chatcmpl-{job.task_uuid}",
        model=chat.model,
        include_usage=bool(chat.stream_options and chat.stream_options.include_usage),
    )
    events = ctx.service.stream(job, ctx.settings.sync_timeout_s, pieces=chat.stream)
    # The first event comes after the prompt is evaluated: errors up to there (a full queue,
    # an image too large for the context) are still answered with their HTTP status.
    first = await anext(events)
    if chat.stream:
        return StreamingResponse(
            sse_events(completion, first, events),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    await events.aclose()
    assert isinstance(first, CaptionResult)  # pieces=False: the result is the only event
    return JSONResponse(completion.body(first))


def model_names(ctx: Context) -> list[str]:
    """Every name a request may give: installed models, and the catalog ids and aliases that
    an installed model answers for."""
    names: list[str] = []
    for status in ctx.registry.list():
        if status.installed or status.served_by:
            names += [status.id, *status.aliases]
    return list(dict.fromkeys(names))


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "edgecap"}
