"""The task store's records, and their rows: what a task, its outcome and its deliveries are.

:class:`CaptionJob` is what the server hands the service; :class:`TaskRecord` is what the API
reports; :class:`Outgoing` / :class:`Delivery` are the outbox. The functions at the end turn
them into the JSON and rows of :mod:`edgecap.runtime.tasks` and back (pixels are stored apart,
once per image).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgecap.records import CaptionRequest, ChatTurn, LoadedImage, Sampling

TaskStatus = Literal["queued", "processing", "success", "error"]
DeliveryKind = Literal["webhook", "upload"]
UNFINISHED = ("queued", "processing")


@dataclass(frozen=True)
class CaptionJob:
    """Everything the worker needs for one caption task, already validated by the server."""

    task_uuid: str
    request: CaptionRequest  # the image already loaded
    model: str | None  # registry name or alias; None = the server's default
    include_cost: bool
    webhook_url: str | None
    upload_endpoint: str | None
    ttl_s: int | None
    fingerprint: str  # sha256 of the canonical JSON of the original task (idempotency)
    original_task: dict[str, Any]  # the task object as the client sent it
    owner: str | None = None  # which API key (a hash) sent it; None without keys


@dataclass(frozen=True)
class TaskRecord:
    """What the store knows about a task, as the API reports it."""

    task_uuid: str
    status: TaskStatus
    result: dict[str, Any] | None  # the success item
    error: dict[str, Any] | None  # the error object
    original_task: dict[str, Any]
    response: dict[str, Any] | None  # the envelope as sent: {"data": [...]} or {"errors": [...]}
    expires_at: float | None
    owner: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED


@dataclass(frozen=True)
class ClaimedTask:
    """A task the dispatcher took off the queue."""

    job: CaptionJob
    attempts: int  # including this one
    queued_seconds: float  # from submission to this claim


@dataclass(frozen=True)
class Outgoing:
    """A delivery to make once a task has finished."""

    kind: DeliveryKind
    url: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Delivery:
    """A pending delivery from the outbox."""

    id: int
    task_uuid: str
    attempts: int  # made so far
    outgoing: Outgoing


# ---------------------------------------------------------------------- rows <-> records


def image_key(image: LoadedImage) -> str:
    """The same source resized to the same size gives the same pixels: store them once."""
    return f"{image.sha256}-{image.width}x{image.height}"


def encode_job(job: CaptionJob) -> str:
    request = job.request
    image = request.image
    return json.dumps(
        {
            "model": job.model,
            "include_cost": job.include_cost,
            "webhook_url": job.webhook_url,
            "upload_endpoint": job.upload_endpoint,
            "ttl_s": job.ttl_s,
            "prompt": request.prompt,
            "system_prompt": request.system_prompt,
            "sampling": asdict(request.sampling),
            "json_schema": request.json_schema,
            "history": [asdict(turn) for turn in request.history],
            "image": {k: v for k, v in asdict(image).items() if k != "rgb"} if image else None,
        }
    )


def decode_job(row: sqlite3.Row) -> CaptionJob:
    data = json.loads(row["job"])
    image_meta = data["image"]
    image = LoadedImage(rgb=row["rgb"], **image_meta) if image_meta else None
    request = CaptionRequest(
        image=image,
        prompt=data["prompt"],
        system_prompt=data["system_prompt"],
        sampling=_sampling(data["sampling"]),
        json_schema=data["json_schema"],
        history=tuple(ChatTurn(**turn) for turn in data.get("history", ())),
    )
    return CaptionJob(
        task_uuid=row["task_uuid"],
        request=request,
        model=data["model"],
        include_cost=data["include_cost"],
        webhook_url=data["webhook_url"],
        upload_endpoint=data["upload_endpoint"],
        ttl_s=data["ttl_s"],
        fingerprint=row["fingerprint"],
        original_task=json.loads(row["original_task"]),
        owner=row["owner"],
    )


def _sampling(data: dict[str, Any]) -> Sampling:
    return Sampling(**{**data, "stop": tuple(data.get("stop", ()))})


RECORD_COLUMNS = (
    "task_uuid",
    "status",
    "result",
    "error",
    "original_task",
    "response",
    "expires_at",
    "owner",
)


def record_of(row: sqlite3.Row) -> TaskRecord:
    """A row as a record; a row read without ``original_task`` gives ``{}`` for it."""
    keys = row.keys()
    return TaskRecord(
        task_uuid=row["task_uuid"],
        status=row["status"],
        result=_loads(row["result"]),
        error=_loads(row["error"]),
        original_task=json.loads(row["original_task"]) if "original_task" in keys else {},
        response=_loads(row["response"]),
        expires_at=row["expires_at"],
        owner=row["owner"],
    )


def delivery_of(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        task_uuid=row["task_uuid"],
        attempts=row["attempts"],
        outgoing=Outgoing(
            kind=row["kind"], url=row["url"], body=row["body"], content_type=row["content_type"]
        ),
    )


def dumps_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
