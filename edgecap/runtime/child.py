"""The engine process's main loop: several tasks in flight, decoded together.

The child receives :class:`WorkItem`s while it works. A batching engine (one with a
``scheduler``, :class:`edgecap.engine.scheduler.Scheduler`) gets them as they arrive: between
two decode steps the loop reads the pipe without blocking, submits new items, cancels, then
steps and sends what the step produced. An engine without a scheduler (test doubles, any
``caption()``-only engine) runs its items one after another. A task for another model waits
until the current model's tasks are done, then the model is swapped (memory is tight).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

from edgecap.errors import EdgecapError
from edgecap.logs import LogSetup
from edgecap.records import CaptionRequest, CaptionResult, TokenPiece
from edgecap.runtime.messages import WorkCancel, WorkDone, WorkError, WorkItem, WorkPiece

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Event

logger = logging.getLogger(__name__)

Event_ = tuple[Hashable, TokenPiece | CaptionResult | EdgecapError]


class CaptionEngine(Protocol):
    """The part of :class:`edgecap.engine.engine.Engine` the worker needs at least."""

    def caption(self, request: CaptionRequest) -> CaptionResult: ...

    def close(self) -> None: ...


class StepScheduler(Protocol):
    """The part of :class:`edgecap.engine.scheduler.Scheduler` the child loop drives."""

    @property
    def idle(self) -> bool: ...

    def submit(self, key: Hashable, request: CaptionRequest) -> None: ...

    def cancel(self, key: Hashable) -> None: ...

    def report(self, key: Hashable, error: EdgecapError) -> None: ...

    def step(self) -> list[Event_]: ...


EngineFactory = Callable[[str | None], CaptionEngine]


class OneAtATime:
    """A :class:`StepScheduler` over ``engine.caption``: each step runs one whole caption."""

    def __init__(self, engine: CaptionEngine) -> None:
        self._engine = engine
        self._queue: deque[tuple[Hashable, CaptionRequest | EdgecapError]] = deque()

    @property
    def idle(self) -> bool:
        return not self._queue

    def submit(self, key: Hashable, request: CaptionRequest) -> None:
        self._queue.append((key, request))

    def cancel(self, key: Hashable) -> None:
        pass  # a caption()-only engine cannot stop mid-way; the task just finishes

    def report(self, key: Hashable, error: EdgecapError) -> None:
        self._queue.append((key, error))

    def step(self) -> list[Event_]:
        key, request = self._queue.popleft()
        if isinstance(request, EdgecapError):
            return [(key, request)]
        try:
            return [(key, self._engine.caption(request))]
        except Exception as exc:
            return [(key, as_edgecap(exc))]


class _Engines:
    """The one engine the child holds, and the scheduler that drives it."""

    def __init__(self, factory: EngineFactory) -> None:
        self._factory = factory
        self._name: str | None = None
        self._engine: CaptionEngine | None = None
        self.scheduler: StepScheduler | None = None

    def get(self, name: str | None) -> StepScheduler:
        if self._engine is None or name != self._name:
            self.close()
            engine = self._factory(name)
            self._engine, self._name = engine, name
            batching = getattr(engine, "scheduler", None)
            self.scheduler = batching if batching is not None else OneAtATime(engine)
        assert self.scheduler is not None
        return self.scheduler

    def holds(self, name: str | None) -> bool:
        return self._engine is not None and name == self._name

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine, self.scheduler = None, None


class _Loop:
    """Items in flight on the current model, and items waiting for another model."""

    def __init__(self, engines: _Engines, conn: Connection, loaded: Event) -> None:
        self.engines, self.conn, self.loaded = engines, conn, loaded
        self.items: dict[str, WorkItem] = {}  # in flight on the current model
        self.waiting: deque[WorkItem] = deque()  # for another model
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            self._read(block=not self.items and not self.waiting)
            if self.stopping:
                return
            self._start_waiting()
            scheduler = self.engines.scheduler
            if self.items and scheduler is not None and not scheduler.idle:
                try:
                    events = scheduler.step()
                except Exception as exc:  # a bug: fail what is in flight, reload the engine
                    logger.exception("The scheduler failed")
                    events = [(uuid, as_edgecap(exc)) for uuid in self.items]
                    self.engines.close()
                self._send_events(events)

    def _read(self, *, block: bool) -> None:
        while block or self.conn.poll():
            block = False
            try:
                message: Any = self.conn.recv()
            except EOFError:  # the parent is gone
                message = None
            if message is None:
                self.stopping = True
                return
            if isinstance(message, WorkCancel):
                self._cancel(message.task_uuid)
            elif isinstance(message, WorkItem):
                self.waiting.append(message)

    def _cancel(self, task_uuid: str) -> None:
        scheduler = self.engines.scheduler
        if task_uuid in self.items and scheduler is not None:
            scheduler.cancel(task_uuid)

    def _start_waiting(self) -> None:
        """Submit waiting items that use the loaded model (or swap models when idle)."""
        while self.waiting:
            item = self.waiting[0]
            if not self.engines.holds(item.model) and self.items:
                return  # finish this model's tasks before swapping
            self.waiting.popleft()
            try:
                scheduler = self.engines.get(item.model)
            except Exception as exc:  # the model cannot load: this task's error
                self._send(WorkDone(item.task_uuid, None, WorkError.from_exception(exc)))
                continue
            if self.engines.holds(None):
                self.loaded.set()  # the default model loaded late (it had failed at start)
            self.items[item.task_uuid] = item
            try:
                scheduler.submit(item.task_uuid, item.request)
            except Exception as exc:
                scheduler.report(item.task_uuid, as_edgecap(exc))

    def _send_events(self, events: list[Event_]) -> None:
        for key, value in events:
            item = self.items.get(str(key))
            if item is None:
                continue
            if isinstance(value, TokenPiece):
                if item.stream:
                    self._send(WorkPiece(item.task_uuid, value.text))
                continue
            del self.items[item.task_uuid]
            if isinstance(value, CaptionResult):
                self._send(WorkDone(item.task_uuid, value))
            else:
                self._send(WorkDone(item.task_uuid, None, WorkError.from_exception(value)))

    def _send(self, message: WorkDone | WorkPiece) -> None:
        try:
            self.conn.send(message)
        except (OSError, EOFError):  # the parent is gone: nothing left to answer
            self.stopping = True
            self.items.clear()


def as_edgecap(exc: BaseException) -> EdgecapError:
    error = WorkError.from_exception(exc)
    return error.to_exception()


def serve(
    factory: EngineFactory, conn: Connection, loaded: Event, log_setup: LogSetup | None = None
) -> None:
    """The child's main loop: set up logging, load the default model, then caption until told
    to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if log_setup is not None:
        log_setup.apply()
    logger.info("Engine process %d started; loading the default model", os.getpid())
    engines = _Engines(factory)
    try:
        started = time.perf_counter()
        engines.get(None)
        loaded.set()
        logger.info("Loaded the default model in %.1f s", time.perf_counter() - started)
    except Exception as exc:  # reported to the first task that needs the default model
        logger.warning("Could not load the default model: %s", exc)
    try:
        _Loop(engines, conn, loaded).run()
    finally:
        engines.close()
