"""The errors a caption task can end with, besides the engine's own, each saying what to do."""

from __future__ import annotations

import sqlite3

from edgecap.errors import EdgecapError, InferenceError, InsufficientStorage, TaskCancelled
from edgecap.runtime.storage import is_disk_full
from edgecap.runtime.tasks import CaptionJob
from edgecap.runtime.worker import WorkerCrashed


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
