"""The caption API's result item: one shape for the server, the CLI and batch runs."""

from __future__ import annotations

from typing import Any

from edgecap.records import CaptionResult

# Caption results carry this task type, as Runware's live API answers (caption-api.md).
RESULT_TASK_TYPE = "imageCaption"


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
