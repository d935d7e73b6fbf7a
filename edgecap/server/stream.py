"""``POST /v1/stream``: one caption task, answered as server-sent events while it generates.

The task is the ``caption`` task of ``POST /v1`` (one object, one image), checked and queued
exactly as there: the same key check, body limit, validation, caption slots, queue and engine.
Until the task is queued the answer is the usual JSON envelope with its HTTP status (so a bad
image is a 400 with the API's message); from then on it is ``text/event-stream``:

- ``event: accepted`` ``{"taskUUID"}`` once the task is queued;
- ``event: piece`` ``{"text"}`` for each piece of text as the engine generates it;
- ``event: result`` — the result item of ``POST /v1`` plus ``timings`` (seconds per stage),
  ``promptTokens``, ``imageTokens``, ``generatedTokens``, ``finishReason`` — or
  ``event: error`` with the error object; then the stream ends.

A comment line is sent every :data:`KEEPALIVE_S` seconds while nothing else is. A client that
goes away (the web page's Stop button aborts its request) cancels the task: it is taken out of
the queue, or generation stops at the next token, and the task ends ``taskCancelled``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from edgecap.errors import AuthError, EdgecapError, InvalidParameter
from edgecap.protocol import Reply, error_object
from edgecap.records import CaptionResult, TokenPiece
from edgecap.runtime.listeners import Listener
from edgecap.runtime.tasks import TaskRecord
from edgecap.server.auth import bearer_key
from edgecap.server.body import read_body
from edgecap.server.handlers import Context, submit_caption
from edgecap.server.limits import decode_json
from edgecap.server.schema import CaptionTask, parse_task

KEEPALIVE_S = 10.0
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def stream_caption(request: Request, ctx: Context) -> Response:
    """The SSE answer to one caption task, or a JSON error before it is queued."""
    task_uuid: str | None = None
    try:
        key = bearer_key(request.headers.get("authorization"))
        ctx.keys.check(key)
        raw = await _one_task(request, ctx)
        task_uuid = raw.get("taskUUID") if isinstance(raw.get("taskUUID"), str) else None
        task = parse_task(CaptionTask, raw)
        if len(task.image_sources()) != 1:
            raise InvalidParameter(
                "A streamed caption takes one image: send inputs.image (or inputImage), or use "
                "POST /v1 for inputImages.",
                parameter="inputImages",
            )
    except EdgecapError as exc:
        return _error_reply(exc, task_uuid)
    feed = ctx.service.watch(task.task_uuid)  # before submitting, so that no piece is missed
    try:
        async with ctx.caption_slots:
            owner = ctx.owner_of(key)
            records, resent = await run_in_threadpool(submit_caption, task, raw, ctx, owner)
    except EdgecapError as exc:
        feed.close()
        return _error_reply(exc, task.task_uuid)
    return _TaskStream(
        ctx, feed, records[0], client_uuid=task.task_uuid, owned=not resent, owner=owner
    )


async def _one_task(request: Request, ctx: Context) -> dict[str, Any]:
    raw = decode_json(
        await read_body(request, ctx.settings.max_body_bytes, ctx.settings.body_timeout_s)
    )
    if not isinstance(raw, dict):
        raise InvalidParameter(
            "POST /v1/stream takes one caption task object (not an array): "
            '{"taskType": "caption", "taskUUID": "...", "inputs": {"image": "..."}}.',
            parameter="body",
        )
    return raw


def _error_reply(exc: EdgecapError, task_uuid: str | None) -> JSONResponse:
    task_type = None if isinstance(exc, AuthError) and task_uuid is None else "caption"
    reply = Reply.of_error(exc, task_type=task_type, task_uuid=task_uuid)
    return JSONResponse(reply.body(), status_code=reply.status, headers=reply.headers())


class _TaskStream(StreamingResponse):
    """The event stream of one task. When the response ends for any reason before the final
    event was sent (the client went away, the server is stopping), the task is cancelled."""

    def __init__(
        self,
        ctx: Context,
        feed: Listener,
        record: TaskRecord,
        *,
        client_uuid: str,
        owned: bool,
        owner: str | None,
    ) -> None:
        self.ctx, self.feed, self.record = ctx, feed, record
        self.client_uuid, self.owned, self.finished = client_uuid, owned, False
        self.owner = owner
        super().__init__(self.events(), media_type="text/event-stream", headers=STREAM_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.feed.close()
            if self.owned and not self.finished:  # stop spending the engine on it
                await run_in_threadpool(self.ctx.service.cancel, self.record.task_uuid)

    async def events(self) -> AsyncIterator[str]:
        yield _event("accepted", {"taskUUID": self.client_uuid})
        engine: CaptionResult | None = None
        while not self.record.finished:
            item = await self.feed.next(KEEPALIVE_S)
            if item is None:
                yield ": keep-alive\n\n"
            elif isinstance(item, TokenPiece):
                yield _event("piece", {"text": item.text})
            else:  # the outcome: the engine's result, or the task's error
                engine = item if isinstance(item, CaptionResult) else None
                break
        final = await run_in_threadpool(
            partial(self.ctx.service.get, self.record.task_uuid, owner=self.owner)
        )
        self.finished = True  # nothing is left to cancel, even if the last send fails
        yield _final_event(final, engine, self.client_uuid)


def _final_event(record: TaskRecord, engine: CaptionResult | None, client_uuid: str) -> str:
    if record.status == "success" and record.result is not None:
        item = {**record.result, "taskUUID": client_uuid}
        if engine is not None:
            item |= {
                "timings": engine.timings,
                "promptTokens": engine.prompt_tokens,
                "imageTokens": engine.image_tokens,
                "generatedTokens": engine.generated_tokens,
                "finishReason": engine.finish_reason,
            }
        return _event("result", item)
    if record.error is not None:
        return _event("error", {**record.error, "status": "error", "taskUUID": client_uuid})
    unknown = EdgecapError(f"The task ended in an unknown state ({record.status}).")
    return _event("error", error_object(unknown, task_type="caption", task_uuid=client_uuid))


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
