"""Live feeds of a task's text: pieces from the dispatcher thread to coroutines awaiting them.

A coroutine opens a :class:`TaskFeed` for a task (before or while it runs) and reads the
pieces of text the engine generates, then one :class:`FeedEnd` once the task has finished and
its record is final. Pieces are handed over with ``loop.call_soon_threadsafe``, so the
dispatcher never blocks on a slow reader; a feed holds at most one task's pieces (bounded by
its ``maxTokens``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from edgecap.records import CaptionResult


@dataclass(frozen=True)
class FeedEnd:
    """The task has finished; ``result`` is the engine's record, if it produced one."""

    result: CaptionResult | None


class TaskFeed:
    """One reader's feed of one task."""

    def __init__(self, feeds: Feeds, task_uuid: str) -> None:
        self.task_uuid = task_uuid
        self._feeds = feeds
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | FeedEnd] = asyncio.Queue()

    async def next(self, timeout: float) -> str | FeedEnd | None:
        """The next piece, the end, or None if nothing came within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        self._feeds.remove(self)

    def put(self, item: str | FeedEnd) -> None:
        """Called from any thread."""
        with contextlib.suppress(RuntimeError):  # the reader's loop has closed meanwhile
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)


class Feeds:
    """The open feeds, by task."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, list[TaskFeed]] = {}

    def open(self, task_uuid: str) -> TaskFeed:
        feed = TaskFeed(self, task_uuid)
        with self._lock:
            self._open.setdefault(task_uuid, []).append(feed)
        return feed

    def remove(self, feed: TaskFeed) -> None:
        with self._lock:
            left = [f for f in self._open.get(feed.task_uuid, []) if f is not feed]
            if left:
                self._open[feed.task_uuid] = left
            else:
                self._open.pop(feed.task_uuid, None)

    def watched(self, task_uuid: str) -> bool:
        with self._lock:
            return task_uuid in self._open

    def send(self, task_uuid: str, item: str | FeedEnd) -> None:
        with self._lock:
            feeds = list(self._open.get(task_uuid, []))
        for feed in feeds:
            feed.put(item)
