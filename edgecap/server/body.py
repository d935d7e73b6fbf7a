"""Request bodies and WebSocket messages: size limit, read deadline, strict bounded JSON.

The JSON rules themselves (task count, container count, finite numbers, valid Unicode) are in
:mod:`edgecap.server.limits`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from edgecap.errors import BodyTimeout, PayloadTooLarge
from edgecap.server.limits import MAX_TASKS_PER_REQUEST, decode_tasks

THREADPOOL_JSON_BYTES = 256 * 1024  # parse larger bodies off the event loop

__all__ = ["MAX_TASKS_PER_REQUEST", "parse_body", "read_body", "too_large"]


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request is larger than {limit:,} bytes (max_body_bytes / "
        "EDGECAP_MAX_BODY_BYTES). Upload big images with imageUpload, one per request, or "
        "send them as URLs.",
        parameter="body",
    )


class BodyReader:
    """Reads a request body in steps, within one deadline for the whole body."""

    def __init__(self, request: Request, limit: int, timeout_s: float) -> None:
        self._stream: AsyncIterator[bytes] = request.stream()
        self._limit = limit
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self._timeout_s = timeout_s
        self.data = bytearray()
        self.done = False
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(limit)

    async def read(self, up_to: int | None = None) -> bytes:
        """Read until ``up_to`` bytes (default: all) are in; the bytes read so far."""
        while not self.done and (up_to is None or len(self.data) < up_to):
            remaining = self._deadline - asyncio.get_running_loop().time()
            try:
                chunk = await asyncio.wait_for(self._stream.__anext__(), max(remaining, 0.001))
            except StopAsyncIteration:
                self.done = True
                break
            except asyncio.TimeoutError:
                raise BodyTimeout(
                    f"The request body did not arrive within {self._timeout_s:g} s "
                    "(body_timeout_s / EDGECAP_BODY_TIMEOUT_S). Check the connection.",
                    parameter="body",
                ) from None
            self.data += chunk
            if len(self.data) > self._limit:
                raise too_large(self._limit)
        return bytes(self.data)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) before reading it all, and
    a body not received within ``timeout_s`` (408)."""
    return await BodyReader(request, limit, timeout_s).read()


async def parse_body(body: bytes | str) -> list[Any]:
    """The task array of a body or message (a lone task object counts as an array of one)."""
    if len(body) > THREADPOOL_JSON_BYTES:
        return await run_in_threadpool(decode_tasks, body)
    return decode_tasks(body)
