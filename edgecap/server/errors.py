"""Errors at the HTTP/WebSocket edge: the wire's error object, and its HTTP status, made once.

Everything the server sends as an error goes through :func:`error_object`, so every error
carries ``code``, ``message``, ``parameter``, ``taskType`` and ``taskUUID`` (caption-api.md).
The few error kinds that only the edge raises are defined here.
"""

from __future__ import annotations

import logging
from typing import Any

from edgecap.errors import AuthError, EdgecapError, InvalidParameter

logger = logging.getLogger(__name__)

# EdgecapError.extra keys with another name on the wire.
WIRE_NAMES = {"retry_after": "retryAfter"}

# The HTTP status of each error code, for error objects read back from the task store.
STATUS_BY_CODE: dict[str, int] = {
    "invalidApiKey": 401,
    "missingApiKey": 401,
    "taskNotFound": 404,
    "taskExpired": 404,
    "mediaNotFound": 404,
    "rateLimitExceeded": 429,
    "inferenceError": 500,
    "modelNotReady": 503,
    "timeoutProvider": 504,
    "insufficientStorage": 507,
}
DEFAULT_ERROR_STATUS = 400  # invalid*, missing*, unsupported*, conflict*, downloadFailed, ...


class MissingApiKey(AuthError):
    code = "missingApiKey"


class InvalidTaskUUID(EdgecapError):
    code, status = "invalidTaskUUID", 400


class InvalidPrompt(EdgecapError):
    code, status = "invalidPrompt", 400


class UnsupportedTaskType(EdgecapError):
    code, status = "unsupportedTaskType", 400


class MediaNotFound(EdgecapError):
    code, status = "mediaNotFound", 404


class TimeoutProvider(EdgecapError):
    """A sync wait ran out; the task goes on and stays retrievable with getResponse."""

    code, status = "timeoutProvider", 504


class BadRequestBody(InvalidParameter):
    """The body is not JSON, or not a task array."""


def error_object(
    exc: EdgecapError, *, task_type: str | None, task_uuid: str | None
) -> dict[str, Any]:
    """The wire error object for ``exc`` raised while handling one task."""
    fields = {WIRE_NAMES.get(k, k): v for k, v in exc.to_dict().items()}
    out: dict[str, Any] = {
        "code": fields.pop("code"),
        "message": fields.pop("message"),
        "parameter": fields.pop("parameter", None),
    }
    out.update(fields)
    if task_type is not None:
        out["taskType"] = task_type
    if task_uuid is not None:
        out["taskUUID"] = task_uuid
    return out


def unexpected_error(exc: BaseException) -> EdgecapError:
    """A bug, reported without a traceback to the client (the log keeps the traceback)."""
    logger.error("Unexpected error while handling a task", exc_info=exc)
    return EdgecapError(
        f"edgecap failed unexpectedly ({type(exc).__name__}). The task was not run; try again, "
        "and report the problem with the server log if it persists.",
        code="inferenceError",
        status=500,
    )


def status_of(error: dict[str, Any]) -> int:
    """The HTTP status an error object stands for."""
    return STATUS_BY_CODE.get(str(error.get("code")), DEFAULT_ERROR_STATUS)
