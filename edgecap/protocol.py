"""The caption API's wire shapes, built in one place: result items, error objects, envelopes.

docs/api.md ("Envelope", "Errors"): a reply is ``{"data": [...]}`` and/or ``{"errors": [...]}``
— never an empty ``"errors": []``; every error object carries ``code``, ``message``,
``parameter`` (null when no single parameter is at fault), and the task's ``taskType`` and
``taskUUID`` when known. The HTTP status of a reply is 200 when at least one task succeeded or
was accepted, otherwise the status of the (first) failure; a 429 carries ``Retry-After``.

The server, the task service (stored and webhook envelopes), the CLI and batch runs all build
their items and errors here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from edgecap.errors import EdgecapError, status_of_code
from edgecap.records import CaptionResult

logger = logging.getLogger(__name__)

# Caption results carry this task type, as Runware's live API answers.
RESULT_TASK_TYPE = "imageCaption"

# EdgecapError.extra keys with another name on the wire.
WIRE_NAMES = {"retry_after": "retryAfter"}


def cost_of(result: CaptionResult, cost_per_second: float) -> float:
    """Measured compute seconds x the rate, to 6 significant digits."""
    return float(f"{result.compute_seconds * cost_per_second:.6g}")


def result_item(
    result: CaptionResult, task_uuid: str, *, include_cost: bool, cost_per_second: float
) -> dict[str, Any]:
    """The success item for one caption: never ``code``/``error`` keys, ``cost`` only if asked."""
    item: dict[str, Any] = {
        "taskType": RESULT_TASK_TYPE,
        "taskUUID": task_uuid,
        "status": "success",
        "text": result.text,
    }
    if include_cost:
        item["cost"] = cost_of(result, cost_per_second)
    return item


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


def status_of(error: dict[str, Any]) -> int:
    """The HTTP status an error object stands for (it follows from the code)."""
    return status_of_code(str(error.get("code")))


def success_envelope(item: dict[str, Any]) -> dict[str, Any]:
    """The envelope of one finished task that succeeded."""
    return {"data": [item]}


def error_envelope(error: dict[str, Any]) -> dict[str, Any]:
    """The envelope of one finished task that failed."""
    return {"errors": [error]}


def unexpected_error(exc: BaseException) -> EdgecapError:
    """A bug, reported without a traceback to the client (the log keeps the traceback)."""
    logger.error("Unexpected error while handling a task", exc_info=exc)
    return EdgecapError(
        f"edgecap failed unexpectedly ({type(exc).__name__}). The task was not run; try again, "
        "and report the problem with the server log if it persists.",
        code="inferenceError",
    )


@dataclass
class Reply:
    """What one or more tasks produced, in order: the envelope and the status it implies."""

    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_statuses: list[int] = field(default_factory=list)  # parallel to ``errors``
    retry_after: int | None = None  # seconds, from a rate-limit error

    @classmethod
    def of_item(cls, item: dict[str, Any]) -> Reply:
        return cls(items=[item])

    @classmethod
    def of_error(cls, exc: EdgecapError, *, task_type: str | None, task_uuid: str | None) -> Reply:
        reply = cls()
        reply.add_error(exc, task_type=task_type, task_uuid=task_uuid)
        return reply

    def add_error(self, exc: EdgecapError, *, task_type: str | None, task_uuid: str | None) -> None:
        self.errors.append(error_object(exc, task_type=task_type, task_uuid=task_uuid))
        self.error_statuses.append(exc.status)
        retry_after = exc.extra.get("retry_after")
        if isinstance(retry_after, int | float):
            self.retry_after = max(self.retry_after or 0, int(retry_after))

    def add_stored_error(self, error: dict[str, Any]) -> None:
        """An error object read back from the task store (its status follows from its code)."""
        self.errors.append({**error, "status": "error"})
        self.error_statuses.append(status_of(error))

    def extend(self, other: Reply) -> None:
        self.items += other.items
        self.errors += other.errors
        self.error_statuses += other.error_statuses
        if other.retry_after is not None:
            self.retry_after = max(self.retry_after or 0, other.retry_after)

    @property
    def status(self) -> int:
        if self.items or not self.error_statuses:
            return 200
        return self.error_statuses[0]

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.items or not self.errors:
            out["data"] = self.items
        if self.errors:
            out["errors"] = self.errors
        return out

    def frames(self) -> list[dict[str, Any]]:
        """One envelope per result item and per error (WebSocket frames; clients match them
        by taskUUID)."""
        return [success_envelope(item) for item in self.items] + [
            error_envelope(error) for error in self.errors
        ]

    def headers(self) -> dict[str, str]:
        if self.retry_after is not None and self.status == 429:
            return {"Retry-After": str(max(1, self.retry_after))}
        return {}
