"""The reply to a batch of tasks: result items, error objects, and the HTTP status they imply.

caption-api.md, "Envelope": ``{"data": [...]}`` and/or ``{"errors": [...]}`` — never an empty
``"errors": []``; 200 when at least one task succeeded or was accepted, otherwise the status of
the (first) failure; 429 carries ``Retry-After``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecap.errors import EdgecapError
from edgecap.server.errors import error_object, status_of


@dataclass
class Reply:
    """What one or more tasks produced, in order."""

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

    def headers(self) -> dict[str, str]:
        if self.retry_after is not None and self.status == 429:
            return {"Retry-After": str(max(1, self.retry_after))}
        return {}
