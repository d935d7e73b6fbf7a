"""The one exception hierarchy of edgecap.

Every error carries the API error ``code`` (caption-api.md), the HTTP ``status`` it maps to, the
offending ``parameter`` where there is one, and a message that says how to fix the problem. The
edges (HTTP, WebSocket, CLI) translate an ``EdgecapError`` once; nothing else formats errors.
"""

from __future__ import annotations

from typing import Any


class EdgecapError(Exception):
    """Base class. Subclasses set ``code`` and ``status``; instances may override both."""

    code: str = "inferenceError"
    status: int = 500

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
        if status is not None:
            self.status = status
        self.extra = extra  # e.g. min, max, allowedValues, type

    def to_dict(self) -> dict[str, Any]:
        """The error object of the wire protocol, without task identity."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            out["parameter"] = self.parameter
        out.update(self.extra)
        return out


class InvalidParameter(EdgecapError):
    code, status = "invalidParameter", 400


class UnsupportedParameter(EdgecapError):
    code, status = "unsupportedParameter", 400


class InvalidInputImage(EdgecapError):
    """The image could not be read, decoded, or is outside the allowed limits."""

    code, status = "invalidInputImage", 400


class MissingInputImage(EdgecapError):
    code, status = "missingInputImage", 400


class DownloadFailed(EdgecapError):
    """Fetching a URL failed or was refused by policy."""

    code, status = "downloadFailed", 400


class PayloadTooLarge(EdgecapError):
    code, status = "invalidParameter", 413


class UnknownModel(EdgecapError):
    code, status = "unknownModel", 400


class ModelError(EdgecapError):
    """A model file is missing, unreadable, corrupt, or does not match its pair."""

    code, status = "invalidModel", 400


class ModelNotReady(EdgecapError):
    code, status = "modelNotReady", 503


class ContextOverflow(EdgecapError):
    code, status = "invalidParameter", 400


class InferenceError(EdgecapError):
    code, status = "inferenceError", 500


class NotFound(EdgecapError):
    code, status = "taskNotFound", 404


class TaskConflict(EdgecapError):
    """A taskUUID reused for a different task."""

    code, status = "conflictTaskUUID", 400


class TaskExpired(NotFound):
    """A task whose result was kept for its ttl and then deleted."""

    code = "taskExpired"


class AuthError(EdgecapError):
    code, status = "invalidApiKey", 401


class InsufficientStorage(EdgecapError):
    """The server's disk is full."""

    code, status = "insufficientStorage", 507


class RateLimited(EdgecapError):
    code, status = "rateLimitExceeded", 429


class ConversionError(EdgecapError):
    """A checkpoint or GGUF file that the tools cannot convert or quantize."""

    code, status = "invalidModel", 400


class DependencyError(EdgecapError):
    """A package that only the tools need is missing or unusable."""

    code, status = "invalidModel", 500
