"""What crosses the pipe between the server process and the engine process (picklable values).

Parent → child: :class:`WorkItem` (caption this), :class:`WorkCancel` (stop that one), ``None``
(unload and exit). Child → parent: :class:`WorkPiece` (streamed text, only for items that asked)
and exactly one :class:`WorkDone` per item. Errors cross as :class:`WorkError` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecap.errors import EdgecapError, InferenceError, error_class
from edgecap.records import CaptionRequest, CaptionResult


@dataclass(frozen=True)
class WorkItem:
    """One caption for the child: which model, which request; ``stream`` asks for pieces."""

    task_uuid: str
    model: str | None
    request: CaptionRequest
    stream: bool = False


@dataclass(frozen=True)
class WorkCancel:
    """Stop the item with this taskUUID; its :class:`WorkDone` says ``cancelled``."""

    task_uuid: str


@dataclass(frozen=True)
class WorkPiece:
    """A piece of generated text of a streaming item."""

    task_uuid: str
    text: str


@dataclass(frozen=True)
class WorkError:
    """An :class:`EdgecapError` as plain values, so it can cross the process boundary; the
    parent gets back the same subclass (looked up by name in :mod:`edgecap.errors`)."""

    kind: str  # the class name, e.g. "UnknownModel"
    code: str
    status: int
    message: str
    parameter: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_exception(cls, exc: BaseException) -> WorkError:
        if not isinstance(exc, EdgecapError):
            exc = InferenceError(f"The engine failed: {type(exc).__name__}: {exc}")
        return cls(
            type(exc).__name__, exc.code, exc.status, exc.message, exc.parameter, dict(exc.extra)
        )

    def to_exception(self) -> EdgecapError:
        return error_class(self.kind)(
            self.message,
            code=self.code,
            status=self.status,
            parameter=self.parameter,
            **self.extra,
        )


@dataclass(frozen=True)
class WorkDone:
    """The child's answer to one :class:`WorkItem`: a result or an error."""

    task_uuid: str
    result: CaptionResult | None
    error: WorkError | None = None
