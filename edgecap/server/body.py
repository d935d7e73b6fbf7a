"""Request bodies and WebSocket messages: size limit, strict JSON, and the task array."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from edgecap.errors import BadRequestBody, PayloadTooLarge

THREADPOOL_JSON_BYTES = 256 * 1024  # parse larger bodies off the event loop
MAX_TASKS_PER_REQUEST = 64  # tasks in one REST body or WebSocket message (besides authentication)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request is larger than {limit:,} bytes (max_body_bytes / "
        "EDGECAP_MAX_BODY_BYTES). Upload big images with imageUpload, one per request, or "
        "send them as URLs.",
        parameter="body",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) before reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


async def parse_body(body: bytes | str) -> list[Any]:
    """The task array of a body or message (a lone task object counts as an array of one)."""
    if len(body) > THREADPOOL_JSON_BYTES:
        parsed = await run_in_threadpool(decode_json, body)
    else:
        parsed = decode_json(body)
    if isinstance(parsed, dict):
        return [parsed]
    if not isinstance(parsed, list):
        raise BadRequestBody(
            f"The body must be a JSON array of task objects, not {_json_kind(parsed)}: "
            '[{"taskType": "caption", "taskUUID": "...", "inputs": {"image": "..."}}].',
            parameter="body",
        )
    if not parsed:
        raise BadRequestBody(
            "The body is an empty array: send at least one task object.", parameter="body"
        )
    leading_auth = isinstance(parsed[0], dict) and parsed[0].get("taskType") == "authentication"
    if len(parsed) - leading_auth > MAX_TASKS_PER_REQUEST:
        raise BadRequestBody(
            f"The body holds {len(parsed) - leading_auth} tasks; at most "
            f"{MAX_TASKS_PER_REQUEST} are allowed in one request or message. Split them over "
            "several requests.",
            parameter="body",
            max=MAX_TASKS_PER_REQUEST,
        )
    return parsed


def decode_json(data: bytes | str) -> Any:
    """Strict JSON (no NaN or Infinity); BadRequestBody when it is not."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(data, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise BadRequestBody(
            f"The body is not valid JSON ({exc}). Send a UTF-8 JSON array of task objects "
            "with Content-Type: application/json.",
            parameter="body",
        ) from None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else "a string"
