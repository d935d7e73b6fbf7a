"""The one exception hierarchy of edgecap, and the one table of its error codes.

Every error carries the API error ``code`` (docs/api.md, "Errors"), the HTTP ``status`` it maps
to, the offending ``parameter`` where there is one, and a message that says how to fix the
problem. The edges (HTTP, WebSocket, CLI) translate an ``EdgecapError`` once, through
:mod:`edgecap.protocol`; nothing else formats errors.

:data:`CODES` is the registry: each code and the HTTP status it stands for. A class names its
code and gets its status from the table; only a class whose transport status differs from its
code's (``PayloadTooLarge``: ``invalidParameter`` sent as 413) declares ``status`` itself.
Every class is also registered by name (:func:`error_class`), so an error that crossed a process
boundary as plain values comes back as the same subclass (:mod:`edgecap.runtime.worker`).
"""

from __future__ import annotations

from typing import Any

# The API's error codes and the HTTP status of each.
CODES: dict[str, int] = {
    "invalidParameter": 400,
    "unsupportedParameter": 400,
    "invalidInputImage": 400,
    "missingInputImage": 400,
    "downloadFailed": 400,
    "unknownModel": 400,
    "invalidModel": 400,
    "conflictTaskUUID": 400,
    "invalidTaskUUID": 400,
    "invalidPrompt": 400,
    "unsupportedTaskType": 400,
    "invalidApiKey": 401,
    "missingApiKey": 401,
    "taskNotFound": 404,
    "taskExpired": 404,
    "mediaNotFound": 404,
    "taskCancelled": 409,
    "rateLimitExceeded": 429,
    "inferenceError": 500,
    "uploadFailed": 502,
    "modelNotReady": 503,
    "timeoutProvider": 504,
    "insufficientStorage": 507,
}
UNKNOWN_CODE_STATUS = 400  # an error object with a code this table lacks: a client mistake

_CLASSES: dict[str, type[EdgecapError]] = {}


def status_of_code(code: str) -> int:
    """The HTTP status an error code stands for."""
    return CODES.get(code, UNKNOWN_CODE_STATUS)


def error_class(name: str) -> type[EdgecapError]:
    """The registered subclass called ``name`` (``EdgecapError`` for a name not known)."""
    return _CLASSES.get(name, EdgecapError)


class EdgecapError(Exception):
    """Base class. Subclasses set ``code``; an instance may override ``code`` and ``status``."""

    code: str = "inferenceError"
    status: int = CODES["inferenceError"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code not in CODES:
            raise TypeError(f"{cls.__name__}.code {cls.code!r} is not in edgecap.errors.CODES")
        if "status" not in cls.__dict__:
            cls.status = CODES[cls.code]
        _CLASSES.setdefault(cls.__name__, cls)

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        code: str | None = None,
        status: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        if code is not None:
            self.code = code
            self.status = status_of_code(code)
        if status is not None:
            self.status = status
        self.extra = extra  # e.g. min, max, allowedValues, type

    def to_dict(self) -> dict[str, Any]:
        """The error's fields (code, message, parameter, extras), without task identity."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            out["parameter"] = self.parameter
        out.update(self.extra)
        return out


class InvalidParameter(EdgecapError):
    code = "invalidParameter"


class UnsupportedParameter(EdgecapError):
    code = "unsupportedParameter"


class InvalidInputImage(EdgecapError):
    """The image could not be read, decoded, or is outside the allowed limits."""

    code = "invalidInputImage"


class MissingInputImage(EdgecapError):
    code = "missingInputImage"


class DownloadFailed(EdgecapError):
    """Fetching a URL failed or was refused by policy."""

    code = "downloadFailed"


class PayloadTooLarge(EdgecapError):
    """A request body over the limit: ``invalidParameter``, sent with HTTP 413."""

    code, status = "invalidParameter", 413


class UnknownModel(EdgecapError):
    code = "unknownModel"


class ModelError(EdgecapError):
    """A model file is missing, unreadable, corrupt, or does not match its pair."""

    code = "invalidModel"


class ModelNotReady(EdgecapError):
    code = "modelNotReady"


class ContextOverflow(EdgecapError):
    code = "invalidParameter"


class InferenceError(EdgecapError):
    code = "inferenceError"


class NotFound(EdgecapError):
    code = "taskNotFound"


class TaskConflict(EdgecapError):
    """A taskUUID reused for a different task."""

    code = "conflictTaskUUID"


class TaskExpired(NotFound):
    """A task whose result was kept for its ttl and then deleted."""

    code = "taskExpired"


class TaskCancelled(EdgecapError):
    """The client that started a task stopped it (e.g. the web page's Stop button)."""

    code = "taskCancelled"


class AuthError(EdgecapError):
    code = "invalidApiKey"


class MissingApiKey(AuthError):
    code = "missingApiKey"


class InsufficientStorage(EdgecapError):
    """The server's disk is full."""

    code, status = "insufficientStorage", 507


class RateLimited(EdgecapError):
    code = "rateLimitExceeded"


class InvalidTaskUUID(EdgecapError):
    code = "invalidTaskUUID"


class InvalidPrompt(EdgecapError):
    code = "invalidPrompt"


class UnsupportedTaskType(EdgecapError):
    code = "unsupportedTaskType"


class MediaNotFound(EdgecapError):
    code = "mediaNotFound"


class TimeoutProvider(EdgecapError):
    """A sync wait ran out; the task goes on and stays retrievable with getResponse."""

    code = "timeoutProvider"


class BodyTimeout(EdgecapError):
    """The client did not send its request in time — its headers (slowloris) or its body (a
    slow or stalled upload): 408, not 504."""

    code, status = "timeoutProvider", 408


class BadRequestBody(InvalidParameter):
    """The body is not JSON, or not a task array."""


class WorkerCrashed(InferenceError):
    """The engine process died while it was working on a task."""


class WorkerTimedOut(EdgecapError):
    """A task ran past ``task_timeout_s``; its engine process was killed and restarted."""

    code = "timeoutProvider"


class WorkerStopped(ModelNotReady):
    """The worker was stopped before or while a task ran."""


class DeliveryFailed(EdgecapError):
    """One webhook or upload delivery attempt failed."""

    code = "uploadFailed"


class ConversionError(EdgecapError):
    """A checkpoint or GGUF file that the tools cannot convert or quantize."""

    code = "invalidModel"


class DependencyError(EdgecapError):
    """A package that only the tools need is missing or unusable (a fault of the install,
    hence 500, though the code is ``invalidModel``)."""

    code, status = "invalidModel", 500
