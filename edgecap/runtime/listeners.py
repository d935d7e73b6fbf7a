"""Coroutines following a task as it runs: its text pieces, then its result or its error.

The dispatcher thread publishes; each listener is an ``asyncio.Queue`` on the event loop that
registered it, fed with ``call_soon_threadsafe``. A task with no listener wanting pieces is run
without streaming, so nothing crosses the worker's pipe for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Any

from edgecap.errors import EdgecapError
from edgecap.records import CaptionResult, TokenPiece

# What a listener's queue receives: pieces, then exactly one result or error.
Event = TokenPiece | CaptionResult | EdgecapError


@dataclass(eq=False)
class Listener:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    pieces: bool  # wants the text pieces, not only the outcome
    task_uuid: str
    owner: Listeners

    async def next(self, timeout: float) -> Event | None:
        """The next event, or None if none came within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        """Stop listening (idempotent)."""
        self.owner.remove(self.task_uuid, self)


class Listeners:
    """The listeners of each task, by task UUID. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_task: dict[str, list[Listener]] = {}

    def add(self, task_uuid: str, *, pieces: bool) -> Listener:
        """A new listener on the running event loop."""
        listener = Listener(asyncio.get_running_loop(), asyncio.Queue(), pieces, task_uuid, self)
        with self._lock:
            self._by_task.setdefault(task_uuid, []).append(listener)
        return listener

    def remove(self, task_uuid: str, listener: Listener) -> None:
        with self._lock:
            left = [x for x in self._by_task.get(task_uuid, []) if x is not listener]
            if left:
                self._by_task[task_uuid] = left
            else:
                self._by_task.pop(task_uuid, None)

    def wants_pieces(self, task_uuid: str) -> bool:
        with self._lock:
            return any(x.pieces for x in self._by_task.get(task_uuid, []))

    def piece(self, task_uuid: str, text: str) -> None:
        self._publish(task_uuid, TokenPiece(text), pieces_only=True)

    def finished(self, task_uuid: str, outcome: CaptionResult | EdgecapError) -> None:
        self._publish(task_uuid, outcome, pieces_only=False)

    def _publish(self, task_uuid: str, event: Any, *, pieces_only: bool) -> None:
        with self._lock:
            targets = [x for x in self._by_task.get(task_uuid, []) if x.pieces or not pieces_only]
        for listener in targets:
            with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
                listener.loop.call_soon_threadsafe(listener.queue.put_nowait, event)


class Waiters:
    """The asyncio events of coroutines awaiting a task, set from the dispatcher thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def add(self, task_uuid: str) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._events.setdefault(task_uuid, []).append((asyncio.get_running_loop(), event))
        return event

    def remove(self, task_uuid: str, event: asyncio.Event) -> None:
        with self._lock:
            left = [entry for entry in self._events.get(task_uuid, []) if entry[1] is not event]
            if left:
                self._events[task_uuid] = left
            else:
                self._events.pop(task_uuid, None)

    def notify(self, task_uuid: str) -> None:
        with self._lock:
            entries = list(self._events.get(task_uuid, []))
        for loop, event in entries:
            with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
                loop.call_soon_threadsafe(event.set)
