"""The child process that owns the engine, and the parent's handle on it.

llama.cpp is native code: an abort, a segfault or the OOM killer inside it would take the whole
server down if it ran in the server's process. So one child process (multiprocessing "spawn":
no inherited threads or locks) loads the model and captions; the parent sends it
:class:`WorkItem`s over a pipe and gets back :class:`WorkDone` values (messages:
:mod:`edgecap.runtime.messages`; the child's loop: :mod:`edgecap.runtime.child`). Several
threads may :meth:`Worker.run` at once: their tasks are in flight in the child together and
decoded in one batch. A reader thread routes the child's answers to the waiting callers. Errors
cross as values (:class:`WorkError`), never as exceptions. If the child dies, every task in
flight raises :class:`WorkerCrashed` and a fresh child is started, which loads the model again.

The parent never imports llama.cpp: the engine is built in the child by an ``engine_factory``,
a picklable top-level callable taking the model name (None = the default model).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgecap.config import Settings
from edgecap.errors import (
    EdgecapError,
    InferenceError,
    WorkerCrashed,
    WorkerStopped,
    WorkerTimedOut,
)
from edgecap.logs import LogSetup
from edgecap.records import CaptionResult
from edgecap.runtime.child import CaptionEngine, EngineFactory, serve
from edgecap.runtime.messages import (
    EngineInfo,
    WorkCancel,
    WorkDone,
    WorkError,
    WorkItem,
    WorkPiece,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess
    from multiprocessing.synchronize import Event

__all__ = [
    "CaptionEngine",
    "DefaultEngineFactory",
    "EngineFactory",
    "WorkDone",
    "WorkError",
    "WorkItem",
    "Worker",
    "WorkerCrashed",
    "WorkerStopped",
]

logger = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0  # a cancelled overrunning task must stop this soon, or the child is killed
STOP_GRACE_S = 5.0

OnPiece = Callable[[str], None]


@dataclass(frozen=True)
class DefaultEngineFactory:
    """Builds the real engine from the model registry (runs in the child)."""

    settings: Settings

    def __call__(self, model: str | None) -> CaptionEngine:
        # Imported here so that only the child process loads llama.cpp.
        from edgecap.engine.engine import Engine
        from edgecap.registry import Registry

        return Engine(Registry(self.settings).resolve(model), self.settings)


@dataclass(eq=False)
class _Waiter:
    """A caller awaiting one task's answer."""

    on_piece: OnPiece | None
    done: threading.Event = field(default_factory=threading.Event)
    reply: WorkDone | None = None  # None once done: the child died


@dataclass(eq=False)
class _Child:
    """One engine process, its pipe, and the tasks in flight in it."""

    process: SpawnProcess
    conn: Connection
    loaded: Event
    waiters: dict[str, _Waiter] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # waiters and sends
    how: str | None = None  # how it ended, once it has
    info: EngineInfo | None = None  # what it runs on, once it has said

    def send(self, message: WorkItem | WorkCancel | None) -> None:
        with self.lock:
            self.conn.send(message)

    def read_replies(self) -> None:
        """The reader thread: route pieces and answers until the child's pipe closes."""
        while True:
            multiprocessing.connection.wait([self.conn, self.process.sentinel])
            try:
                if not self.conn.poll():  # died without a word
                    break
                message: WorkDone | WorkPiece | EngineInfo = self.conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, EngineInfo):
                self.info = message
                continue
            with self.lock:
                waiter = self.waiters.get(message.task_uuid)
                if isinstance(message, WorkDone):
                    self.waiters.pop(message.task_uuid, None)
            if waiter is None:
                continue
            if isinstance(message, WorkPiece):
                if waiter.on_piece is not None:
                    waiter.on_piece(message.text)
            else:
                waiter.reply = message
                waiter.done.set()
        with self.lock:
            left, self.waiters = list(self.waiters.values()), {}
        for waiter in left:
            waiter.done.set()


class Worker:
    """The parent's handle on the engine process. Thread-safe: tasks run concurrently."""

    def __init__(self, engine_factory: EngineFactory, *, log_setup: LogSetup | None = None) -> None:
        """``log_setup``: how the engine process logs (None: it configures no logging)."""
        self._factory = engine_factory
        self._log_setup = log_setup
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # guards the child's identity (start, restart, stop)
        self._stopping = threading.Event()
        self._child: _Child | None = None
        self._reader: threading.Thread | None = None
        self.restarts = 0

    @property
    def ready(self) -> bool:
        """The child is alive and has loaded the default model."""
        child = self._child
        return bool(child and child.process.is_alive() and child.loaded.is_set())

    @property
    def info(self) -> EngineInfo | None:
        """What the engine process runs on; None until it has loaded the default model."""
        child = self._child
        return child.info if child is not None else None

    @property
    def in_flight(self) -> int:
        child = self._child
        return len(child.waiters) if child is not None else 0

    def start(self) -> None:
        """Start the child; it loads the default model in the background."""
        self._stopping.clear()
        with self._lock:
            self._spawn()

    def run(
        self, item: WorkItem, on_piece: OnPiece | None = None, *, timeout_s: float | None = None
    ) -> CaptionResult:
        """Caption ``item`` in the child (``on_piece`` gets its text as it streams, from the
        reader thread). Raises the task's error, :class:`WorkerCrashed`, or
        :class:`WorkerTimedOut` after ``timeout_s``: the task is cancelled, and if the child
        does not let go of it within :data:`CANCEL_GRACE_S` the child is killed and restarted."""
        if on_piece is not None and not item.stream:
            item = WorkItem(item.task_uuid, item.model, item.request, stream=True)
        with self._lock:
            child = self._child
            if self._stopping.is_set() or child is None:
                raise WorkerStopped("The worker is stopping; the task will run after a restart.")
            if not child.process.is_alive() and child.how is None:
                self._restart(child)  # it died while idle (e.g. loading): not this task
            child = self._child
            assert child is not None
            waiter = _Waiter(on_piece)
            with child.lock:
                child.waiters[item.task_uuid] = waiter
            with contextlib.suppress(OSError):  # it died: the reader wakes the waiter
                child.send(item)
        if not waiter.done.wait(timeout_s):
            raise self._timed_out(child, item, waiter, timeout_s)
        reply = waiter.reply
        if reply is None:
            raise self._crashed(child)
        if reply.error is not None:
            raise reply.error.to_exception()
        if reply.result is None or reply.task_uuid != item.task_uuid:
            raise InferenceError(f"The worker answered for the wrong task ({reply.task_uuid}).")
        return reply.result

    def cancel(self, task_uuid: str) -> None:
        """Stop that task in the child: its :meth:`run` returns a ``cancelled`` result and its
        sequence slot is freed. Unknown or finished tasks are ignored."""
        child = self._child
        if child is not None and task_uuid in child.waiters:
            with contextlib.suppress(OSError):
                child.send(WorkCancel(task_uuid))

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the child. An idle child exits cleanly; a busy one is terminated at once."""
        self._stopping.set()
        with self._lock:
            child = self._child
            if child is None:
                return
            process = child.process
            if not child.waiters:  # idle: ask it to unload and exit
                try:
                    child.send(None)
                    process.join(grace_s)
                except OSError:
                    pass
            if process.is_alive():
                process.terminate()
                process.join(grace_s)
            if process.is_alive():
                process.kill()
                process.join()
            if self._reader is not None:
                self._reader.join(grace_s)  # wakes every waiter: they raise WorkerStopped
            child.conn.close()
            # Drop the child and its Event now: their semaphores are released here, not
            # reported as leaked by multiprocessing's resource tracker at exit.
            self._child = None

    def _spawn(self) -> None:
        parent_end, child_end = self._context.Pipe()
        loaded = self._context.Event()
        process = self._context.Process(
            target=serve,
            args=(self._factory, child_end, loaded, self._log_setup),
            name="edgecap-engine",
            daemon=True,
        )
        process.start()
        child_end.close()  # else the parent would never see EOF when the child dies
        self._child = _Child(process, parent_end, loaded)
        self._reader = threading.Thread(
            target=self._child.read_replies, name="edgecap-worker-reader", daemon=True
        )
        self._reader.start()

    def _timed_out(
        self, child: _Child, item: WorkItem, waiter: _Waiter, timeout_s: float | None
    ) -> EdgecapError:
        """Cancel the overrunning task; kill the child if it does not stop; the error to raise."""
        self.cancel(item.task_uuid)
        if not waiter.done.wait(CANCEL_GRACE_S):
            logger.warning("Task %s overran its deadline; killing the engine", item.task_uuid)
            with contextlib.suppress(OSError):
                child.process.kill()
            waiter.done.wait(STOP_GRACE_S)  # the reader sees it die and wakes the waiters
            with self._lock:
                if child.how is None and not self._stopping.is_set():
                    self._restart(child)  # once, as _crashed does
        with child.lock:
            child.waiters.pop(item.task_uuid, None)
        return WorkerTimedOut(
            f"The caption did not finish within {timeout_s:g} s (task_timeout_s / "
            "EDGECAP_TASK_TIMEOUT_S). Try a smaller maxPixels or maxTokens, or a simpler "
            "jsonSchema.",
            parameter="maxTokens",
        )

    def _crashed(self, child: _Child) -> EdgecapError:
        """The error for a task whose child died (or was stopped); restarts the child once."""
        if self._stopping.is_set():
            return WorkerStopped("The worker was stopped during the task; it will run again.")
        with self._lock:
            if child.how is None:
                self._restart(child)
        return WorkerCrashed(f"The model process {child.how} while captioning.")

    def _restart(self, child: _Child) -> None:
        """Reap the dead child, start a new one; records how the old one ended."""
        child.process.join(STOP_GRACE_S)
        if child.process.is_alive():  # hung up on us but still running: make sure it is gone
            child.process.kill()
            child.process.join()
        child.how = describe_exit(child.process.exitcode)
        logger.warning("The engine process %s; restarting it.", child.how)
        if self._reader is not None:
            self._reader.join(STOP_GRACE_S)
        child.conn.close()
        self.restarts += 1
        self._spawn()


def describe_exit(exitcode: int | None) -> str:
    """'was killed by SIGABRT', 'exited with status 3', ..."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"
