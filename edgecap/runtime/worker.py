"""The child process that owns the engine, and the parent's handle on it.

llama.cpp is native code: an abort, a segfault or the OOM killer inside it would take the whole
server down if it ran in the server's process. So one child process (multiprocessing "spawn":
no inherited threads or locks) loads the model and captions; the parent sends it
:class:`WorkItem`s over a pipe and gets back :class:`WorkDone` values. Errors cross as values
(:class:`WorkError`), never as exceptions. If the child dies, :meth:`Worker.run` raises
:class:`WorkerCrashed` and a fresh child is started, which loads the model again.

The parent never imports llama.cpp: the engine is built in the child by an ``engine_factory``,
a picklable top-level callable taking the model name (None = the default model).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edgecap.config import Settings
from edgecap.errors import (
    EdgecapError,
    InferenceError,
    WorkerCrashed,
    WorkerStopped,
    WorkerTimedOut,
    error_class,
)
from edgecap.logs import LogSetup
from edgecap.records import CaptionRequest, CaptionResult

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess
    from multiprocessing.synchronize import Event

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class CaptionEngine(Protocol):
    """The part of :class:`edgecap.engine.engine.Engine` the worker uses."""

    def caption(self, request: CaptionRequest) -> CaptionResult: ...

    def close(self) -> None: ...


EngineFactory = Callable[[str | None], CaptionEngine]


@dataclass(frozen=True)
class DefaultEngineFactory:
    """Builds the real engine from the model registry (runs in the child)."""

    settings: Settings

    def __call__(self, model: str | None) -> CaptionEngine:
        # Imported here so that only the child process loads llama.cpp.
        from edgecap.engine.engine import Engine
        from edgecap.registry import Registry

        return Engine(Registry(self.settings).resolve(model), self.settings)


@dataclass(frozen=True)
class WorkItem:
    """One caption for the child: which model, which request."""

    task_uuid: str
    model: str | None
    request: CaptionRequest


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


class Worker:
    """The parent's handle on the engine process. :meth:`run` is for one thread at a time."""

    def __init__(self, engine_factory: EngineFactory, *, log_setup: LogSetup | None = None) -> None:
        """``log_setup``: how the engine process logs (None: it configures no logging)."""
        self._factory = engine_factory
        self._log_setup = log_setup
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # held while a task is in the child
        self._stopping = threading.Event()
        self._process: SpawnProcess | None = None
        self._conn: Connection | None = None
        self._loaded: Event | None = None
        self.restarts = 0

    @property
    def ready(self) -> bool:
        """The child is alive and has loaded the default model."""
        process, loaded = self._process, self._loaded
        return bool(process and loaded and process.is_alive() and loaded.is_set())

    def start(self) -> None:
        """Start the child; it loads the default model in the background."""
        self._stopping.clear()
        self._spawn()

    def run(self, item: WorkItem, *, timeout_s: float | None = None) -> CaptionResult:
        """Caption ``item`` in the child. Raises the task's error, :class:`WorkerCrashed`, or
        :class:`WorkerTimedOut` after ``timeout_s`` (the child is killed and restarted)."""
        with self._lock:
            if self._stopping.is_set() or self._process is None or self._conn is None:
                raise WorkerStopped("The worker is stopping; the task will run after a restart.")
            if not self._process.is_alive():  # it died while idle (e.g. loading): not this task
                self._restart()
            try:
                self._conn.send(item)
                reply = self._await_reply(timeout_s)
            except TimeoutError:  # (an OSError: caught first)
                raise self._timed_out(timeout_s) from None
            except (OSError, EOFError):
                reply = None
            if reply is None:
                raise self._crashed()
        if reply.error is not None:
            raise reply.error.to_exception()
        if reply.result is None or reply.task_uuid != item.task_uuid:
            raise InferenceError(f"The worker answered for the wrong task ({reply.task_uuid}).")
        return reply.result

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the child. An idle child exits cleanly; a busy one is terminated at once."""
        self._stopping.set()
        process = self._process
        if process is None:
            return
        if self._lock.acquire(blocking=False):  # idle: ask it to unload and exit
            try:
                if self._conn is not None:
                    self._conn.send(None)
                process.join(grace_s)
            except OSError:
                pass
            finally:
                self._lock.release()
        if process.is_alive():
            process.terminate()
            process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join()
        if self._lock.acquire(timeout=grace_s):  # a task that was running has given up
            try:
                if self._conn is not None:
                    self._conn.close()
                # Drop the child and its Event now: their semaphores are released here, not
                # reported as leaked by multiprocessing's resource tracker at exit.
                self._process = self._loaded = None
            finally:
                self._lock.release()

    def _spawn(self) -> None:
        parent_end, child_end = self._context.Pipe()
        self._loaded = self._context.Event()
        self._process = self._context.Process(
            target=serve,
            args=(self._factory, child_end, self._loaded, self._log_setup),
            name="edgecap-engine",
            daemon=True,
        )
        self._process.start()
        child_end.close()  # else the parent would never see EOF when the child dies
        self._conn = parent_end

    def _await_reply(self, timeout_s: float | None = None) -> WorkDone | None:
        """The child's reply, or None if it died first; TimeoutError after ``timeout_s``."""
        assert self._process is not None and self._conn is not None
        ready = multiprocessing.connection.wait([self._conn, self._process.sentinel], timeout_s)
        if not ready:
            raise TimeoutError
        if not self._conn.poll():  # died without a word
            return None
        try:
            reply: WorkDone = self._conn.recv()
        except EOFError:
            return None
        return reply

    def _timed_out(self, timeout_s: float | None) -> EdgecapError:
        """Kill the child that overran its deadline, start a fresh one, and say so."""
        assert self._process is not None
        if self._stopping.is_set():
            return WorkerStopped("The worker was stopped during the task; it will run again.")
        self._process.kill()
        self._restart()
        return WorkerTimedOut(
            f"The caption did not finish within {timeout_s:g} s (task_timeout_s / "
            "EDGECAP_TASK_TIMEOUT_S); the model process was restarted. Try a smaller maxPixels "
            "or maxTokens, or a simpler jsonSchema.",
            parameter="maxTokens",
        )

    def _crashed(self) -> EdgecapError:
        """The error for a task whose child died (or was stopped); restarts the child."""
        if self._stopping.is_set():
            return WorkerStopped("The worker was stopped during the task; it will run again.")
        how = self._restart()
        return WorkerCrashed(f"The model process {how} while captioning.")

    def _restart(self) -> str:
        """Reap the dead child, start a new one; returns how the old one ended."""
        assert self._process is not None
        self._process.join(STOP_GRACE_S)
        if self._process.is_alive():  # hung up on us but still running: make sure it is gone
            self._process.kill()
            self._process.join()
        how = describe_exit(self._process.exitcode)
        logger.warning("The engine process %s; restarting it.", how)
        if self._conn is not None:
            self._conn.close()
        self.restarts += 1
        self._spawn()
        return how


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


# ---------------------------------------------------------------------- the child


class _Engines:
    """The one engine the child holds; asking for another model swaps it (memory is tight)."""

    def __init__(self, factory: EngineFactory) -> None:
        self._factory = factory
        self._name: str | None = None
        self._engine: CaptionEngine | None = None

    def get(self, name: str | None) -> CaptionEngine:
        if self._engine is None or name != self._name:
            self.close()
            self._engine = self._factory(name)
            self._name = name
        return self._engine

    def holds(self, name: str | None) -> bool:
        return self._engine is not None and name == self._name

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


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
        while (item := _receive(conn)) is not None:
            conn.send(_caption(engines, item))
            if engines.holds(None):
                loaded.set()  # the default model loaded late (it had failed at start)
    finally:
        engines.close()


def _receive(conn: Connection) -> WorkItem | None:
    try:
        item: WorkItem | None = conn.recv()
    except EOFError:  # the parent is gone
        return None
    return item


def _caption(engines: _Engines, item: WorkItem) -> WorkDone:
    try:
        result = engines.get(item.model).caption(item.request)
    except Exception as exc:
        return WorkDone(item.task_uuid, None, WorkError.from_exception(exc))
    return WorkDone(item.task_uuid, result)
