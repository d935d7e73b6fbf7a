"""One handler per task type, shared by REST and WebSocket: task object in, :class:`Reply` out.

:data:`HANDLERS` maps each ``taskType`` to its handler; :func:`run_task` validates nothing
itself, it looks the handler up, runs it, and turns any error into an error object carrying the
task's ``taskType`` and ``taskUUID``. Blocking work (the task store, model files, image
fetching and decoding) runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.concurrency import run_in_threadpool

from edgecap.config import Settings
from edgecap.errors import (
    EdgecapError,
    InvalidParameter,
    NotFound,
    RateLimited,
    TimeoutProvider,
    UnsupportedTaskType,
)
from edgecap.protocol import RESULT_TASK_TYPE, Reply, unexpected_error
from edgecap.registry import Registry
from edgecap.runtime.service import TaskConflict, TaskRecord, TaskService
from edgecap.server.auth import ApiKeys
from edgecap.server.jobs import (
    JobInputs,
    fingerprint,
    image_count,
    job_uuids,
    make_jobs,
    redacted_task,
    storable_task,
)
from edgecap.server.metrics import Metrics
from edgecap.server.schema import (
    CaptionTask,
    GetResponseTask,
    GetTaskDetailsTask,
    ImageUploadTask,
    PingTask,
    parse_task,
)
from edgecap.server.uploads import UploadStore

# Caption tasks (REST and WebSocket together) fetching, decoding and queueing images at once;
# more wait their turn, so a flood of tasks cannot fill the thread pool or the memory.
MAX_CONCURRENT_CAPTIONS = 16


@dataclass(frozen=True)
class Context:
    """The server's collaborators, built once by ``create_app``."""

    settings: Settings
    service: TaskService
    registry: Registry
    uploads: UploadStore
    metrics: Metrics
    keys: ApiKeys
    caption_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_CAPTIONS)
    )

    @property
    def job_inputs(self) -> JobInputs:
        return JobInputs(self.settings, self.registry, self.uploads)

    def owner_of(self, key: str | None) -> str | None:
        """The owner recorded on what a key creates: its hash, or None without keys."""
        return self.keys.identity(key) if self.keys.required else None


@dataclass(frozen=True)
class Caller:
    """Where a task came from, and which key sent it (tasks are visible only to it)."""

    base_url: str  # e.g. http://127.0.0.1:8080, for the URLs of uploaded images
    transport: Literal["rest", "ws"]
    owner: str | None = None  # Context.owner_of(the key)


Handler = Callable[[dict[str, Any], Context, Caller], Awaitable[Reply]]


async def run_tasks(tasks: list[Any], ctx: Context, caller: Caller) -> Reply:
    """Run the tasks of one request concurrently; their replies in request order."""
    reply = Reply()
    for one in await asyncio.gather(*(run_task(raw, ctx, caller) for raw in tasks)):
        reply.extend(one)
    return reply


async def run_task(raw: Any, ctx: Context, caller: Caller) -> Reply:
    """One task's reply; errors become error objects, never exceptions."""
    started = time.perf_counter()
    task_type, task_uuid = task_identity(raw)
    try:
        if not isinstance(raw, dict):
            raise InvalidParameter(
                "Each task must be a JSON object with a taskType, e.g. "
                '{"taskType": "caption", "taskUUID": "...", "inputs": {"image": "..."}}.',
                parameter="task",
            )
        handler = HANDLERS.get(task_type or "")
        if handler is None:
            raise _unsupported_task_type(raw.get("taskType"))
        reply = await handler(raw, ctx, caller)
    except EdgecapError as exc:
        reply = Reply.of_error(exc, task_type=task_type, task_uuid=task_uuid)
    except Exception as exc:  # a bug: answer with an error object, log the traceback
        reply = Reply.of_error(unexpected_error(exc), task_type=task_type, task_uuid=task_uuid)
    delivery = raw.get("deliveryMethod") if isinstance(raw, dict) else None
    ctx.metrics.observe_task(
        task_type if task_type in HANDLERS else "unsupported",  # labels from a fixed set
        _outcome(reply),
        delivery if delivery in ("sync", "async") else "sync",
        time.perf_counter() - started,
    )
    return reply


def task_identity(raw: Any) -> tuple[str | None, str | None]:
    """The ``taskType`` and ``taskUUID`` of a task as sent, when they are strings."""
    if not isinstance(raw, dict):
        return None, None
    task_type, task_uuid = raw.get("taskType"), raw.get("taskUUID")
    return (
        task_type if isinstance(task_type, str) else None,
        task_uuid if isinstance(task_uuid, str) else None,
    )


# ---------------------------------------------------------------------------- caption


async def caption(raw: dict[str, Any], ctx: Context, caller: Caller) -> Reply:
    """Queue one job per image; answer at once (async) or once finished (sync)."""
    task = parse_task(CaptionTask, raw)
    async with ctx.caption_slots:
        records, _ = await run_in_threadpool(submit_caption, task, raw, ctx, caller.owner)
    if task.delivery_method == "async":
        return render_records(records, task.task_uuid)
    timeout = ctx.settings.sync_timeout_s
    waited = await asyncio.gather(*(ctx.service.wait(r.task_uuid, timeout) for r in records))
    return render_records(list(waited), task.task_uuid, timed_out_after=timeout)


def submit_caption(
    task: CaptionTask, raw: dict[str, Any], ctx: Context, owner: str | None
) -> tuple[list[TaskRecord], bool]:
    """The task's records: those of its earlier sending (then True), or of its jobs, built
    and queued now (then False). ``owner``: the sending key's hash (None without keys).

    Blocking (store, model files, image fetch and decode): runs in the thread pool, in one hop.
    """
    uuids = job_uuids(task.task_uuid, len(task.image_sources()))
    records = _resent_records(ctx.service, uuids, fingerprint(storable_task(raw)), owner)
    if records is not None:
        return records, True
    _refuse_if_queue_full(ctx, len(uuids))  # before fetching and decoding images for nothing
    jobs = make_jobs(task, raw, ctx.job_inputs, owner=owner)
    for job in jobs:
        if job.request.image is not None:
            ctx.metrics.observe_image_load(job.request.image.load_seconds)
    return ctx.service.submit_all(jobs), False


def _refuse_if_queue_full(ctx: Context, needed: int) -> None:
    """RateLimited (429, retryAfter) when the queue has no room for the task's ``needed`` jobs
    (one per image): a cheap early check. ``TaskService.submit_all`` checks again, atomically.
    """
    waiting = ctx.service.queue_depth()
    if waiting + needed > ctx.settings.queue_size:
        retry_after = ctx.service.retry_after(waiting)
        raise RateLimited(
            f"The queue has no room for {needed} more task(s) ({waiting} waiting). Retry in "
            f"about {retry_after} s, or raise queue_size (EDGECAP_QUEUE_SIZE).",
            retry_after=retry_after,
        )


def _resent_records(
    service: TaskService, uuids: list[str], task_fingerprint: str, owner: str | None
) -> list[TaskRecord] | None:
    """The records of a task sent before with the same payload, or None if it is new.

    A used taskUUID with another payload (or another key's) raises TaskConflict. Checking
    first spares a resent task from fetching and decoding its images again.
    """
    try:
        first = service.get(uuids[0], owner=owner)
    except NotFound:  # unknown, expired or another key's (then submit decides)
        return None
    if fingerprint(first.original_task) != task_fingerprint:
        raise TaskConflict(
            f"The taskUUID {uuids[0]} was already used for a different task. Give every new "
            "task a new UUID v4; resend a task unchanged to get its status.",
            parameter="taskUUID",
        )
    try:
        return [first] + [service.get(u, owner=owner, with_task=False) for u in uuids[1:]]
    except NotFound:  # a multi-image task that was only partly queued: queue the rest
        return None


def render_records(
    records: list[TaskRecord], task_uuid: str, *, timed_out_after: float | None = None
) -> Reply:
    """The reply for a caption task's records (one per image), under the task's UUID.

    Unfinished records answer ``status: processing``, or — after a sync wait
    (``timed_out_after`` set) — a ``timeoutProvider`` error.
    """
    reply = Reply()
    for record in records:
        if record.status == "success" and record.result is not None:
            reply.items.append({**record.result, "taskUUID": task_uuid})
        elif record.status == "error" and record.error is not None:
            reply.add_stored_error({**record.error, "taskUUID": task_uuid})
        elif timed_out_after is not None:
            reply.add_error(
                TimeoutProvider(
                    f"The caption did not finish within {timed_out_after:g} s (sync_timeout_s). "
                    "It is still running: fetch the result with a getResponse task and this "
                    'taskUUID, or send deliveryMethod "async" to be answered at once.',
                    parameter="deliveryMethod",
                ),
                task_type=RESULT_TASK_TYPE,
                task_uuid=task_uuid,
            )
        else:
            reply.items.append(processing_item(task_uuid))
    return reply


def processing_item(task_uuid: str) -> dict[str, Any]:
    return {"taskType": RESULT_TASK_TYPE, "taskUUID": task_uuid, "status": "processing"}


# ---------------------------------------------------------------------------- other tasks


async def get_response(raw: dict[str, Any], ctx: Context, caller: Caller) -> Reply:
    """The status, result or error of an earlier caption task (of the caller's key)."""
    task = parse_task(GetResponseTask, raw)
    records = await run_in_threadpool(_task_records, ctx.service, task.task_uuid, caller.owner)
    return render_records(records, task.task_uuid)


def _task_records(service: TaskService, task_uuid: str, owner: str | None) -> list[TaskRecord]:
    """A task's records, its stored task read once (from the first)."""
    first = service.get(task_uuid, owner=owner)
    uuids = job_uuids(task_uuid, image_count(first.original_task))
    return [first] + [service.get(u, owner=owner, with_task=False) for u in uuids[1:]]


async def get_task_details(raw: dict[str, Any], ctx: Context, caller: Caller) -> Reply:
    """An earlier task as it was sent (URL secrets redacted), and the envelope it was (or is
    being) answered with."""
    task = parse_task(GetTaskDetailsTask, raw)
    records = await run_in_threadpool(_task_records, ctx.service, task.task_uuid, caller.owner)
    response = (
        records[0].response
        if len(records) == 1 and records[0].response is not None
        else render_records(records, task.task_uuid).body()
    )
    return Reply.of_item(
        {
            "taskType": "getTaskDetails",
            "taskUUID": task.task_uuid,
            "request": [redacted_task(records[0].original_task)],
            "response": response,
        }
    )


async def image_upload(raw: dict[str, Any], ctx: Context, caller: Caller) -> Reply:
    """Store an image; answer its UUID and the URL it is served at."""
    task = parse_task(ImageUploadTask, raw)
    async with ctx.caption_slots:  # fetching and decoding: bounded like captions
        image_uuid = await run_in_threadpool(ctx.uploads.save, task.image, caller.owner)
    return Reply.of_item(
        {
            "taskType": "imageUpload",
            "taskUUID": task.task_uuid,
            "imageUUID": image_uuid,
            "imageURL": f"{caller.base_url}/v1/images/{image_uuid}",
        }
    )


async def ping(raw: dict[str, Any], ctx: Context, caller: Caller) -> Reply:
    task = parse_task(PingTask, raw)
    item: dict[str, Any] = {"taskType": "ping", "pong": True}
    if task.task_uuid is not None:
        item["taskUUID"] = task.task_uuid
    return Reply.of_item(item)


async def misplaced_authentication(raw: dict[str, Any], ctx: Context, caller: Caller) -> Reply:
    raise InvalidParameter(
        "An authentication task must come first: the first element of the array (REST) or "
        "the first message (WebSocket). Over REST you can send 'Authorization: Bearer <key>' "
        "instead.",
        parameter="taskType",
    )


HANDLERS: dict[str, Handler] = {
    "caption": caption,
    "imageCaption": caption,
    "getResponse": get_response,
    "getTaskDetails": get_task_details,
    "imageUpload": image_upload,
    "ping": ping,
    "authentication": misplaced_authentication,
}


def _unsupported_task_type(task_type: Any) -> EdgecapError:
    supported = ", ".join(t for t in HANDLERS if t != "authentication")
    if task_type is None:
        return InvalidParameter(
            f"The task has no taskType. Set it to one of: {supported}.", parameter="taskType"
        )
    if not isinstance(task_type, str):
        return InvalidParameter(
            f"taskType must be a string, one of: {supported}.", parameter="taskType"
        )
    return UnsupportedTaskType(
        f"edgecap does not run {task_type[:60]!r} tasks; it runs: {supported}.",
        parameter="taskType",
        allowedValues=[t for t in HANDLERS if t != "authentication"],
    )


def _outcome(reply: Reply) -> str:
    if reply.errors:
        return str(reply.errors[0].get("code"))
    if any(item.get("status") == "processing" for item in reply.items):
        return "accepted"
    return "success"
