"""The errors a caption task can end with, besides the engine's own, each saying what to do."""

from __future__ import annotations

import logging
import sqlite3

from edgecap.errors import EdgecapError, InferenceError, InsufficientStorage, TaskCancelled
from edgecap.protocol import RESULT_TASK_TYPE, error_envelope, error_object
from edgecap.runtime.storage import Reserve, is_disk_full
from edgecap.runtime.tasks import CaptionJob, TaskStore
from edgecap.runtime.worker import WorkerCrashed

logger = logging.getLogger(__name__)


def client_uuid(job: CaptionJob) -> str:
    """The taskUUID the client sent. Results carry it, not ``job.task_uuid``: the jobs of a
    multi-image task are stored under UUIDs derived from it, which the client never saw."""
    sent = job.original_task.get("taskUUID")
    return sent if isinstance(sent, str) and sent else job.task_uuid


def cancelled(job: CaptionJob, generated: int) -> TaskCancelled:
    return TaskCancelled(
        f"The task {client_uuid(job)} was cancelled by its client after {generated} generated "
        "token(s). Send it again under a new taskUUID to caption the image.",
        parameter="taskUUID",
        generatedTokens=generated,
    )


def storage_error(exc: sqlite3.OperationalError) -> EdgecapError:
    if is_disk_full(exc):
        return InsufficientStorage(
            "The server's disk is full: the task could not be stored. Try again later; the "
            "operator must free space (EDGECAP_HOME)."
        )
    return InferenceError(f"The task store failed ({exc}). Try again.")


def interrupted(attempts: int) -> InferenceError:
    return InferenceError(
        f"The server stopped during each of the {attempts} attempts at this task (it was "
        "killed or lost power); it will not be tried again. Send it again under a new "
        "taskUUID; if it keeps happening, try a smaller maxPixels or maxTokens."
    )


def gave_up(attempts: int, crash: WorkerCrashed) -> InferenceError:
    return InferenceError(
        f"{crash.message} The task was tried {attempts} times and the model process stopped "
        "each time; it will not be retried. The image or prompt may trigger a fault in "
        "llama.cpp or exhaust memory: try a smaller maxPixels or a shorter maxTokens."
    )


def record_disk_full(store: TaskStore, reserve: Reserve, job: CaptionJob, ttl_s: int) -> None:
    """Fail ``job`` with ``insufficientStorage`` — a small write, given the disk reserve's
    space if need be; if even that fails the task stays claimed (its attempt counts at
    restart)."""
    exc = InsufficientStorage(
        "The server's disk is full: the result of this task could not be saved. Free "
        "space on the server (EDGECAP_HOME), then send the task again under a new taskUUID."
    )
    error = error_object(exc, task_type=RESULT_TASK_TYPE, task_uuid=client_uuid(job))
    for _ in range(2):  # as is; then again with the reserve's space given back
        try:
            store.finish(
                job.task_uuid, result=None, error=error, response=error_envelope(error), ttl_s=ttl_s
            )
            return
        except sqlite3.OperationalError:
            if not reserve.release():
                break
    logging.getLogger(__name__).error(
        "Task %s: the disk is full; it stays unfinished", job.task_uuid
    )
