"""The child process that owns the engine, and the parent's handle on it.

llama.cpp is native code: an abort, a segfault or the OOM killer inside it would take the whole
server down if it ran in the server's process. So one child process (multiprocessing "spawn":
no inherited threads or locks) loads the model and captions; the parent sends it
:class:`WorkItem`s over a pipe and gets back :class:`WorkDone` values. Errors cross as values
(:class:`WorkError`), never as exceptions. If the child dies, :meth:`Worker.run` raises
:class:`WorkerCrashed` and a fresh child is started, which loads the model again.

While a task runs the child streams its text as :class:`WorkPiece` messages before the
:class:`WorkDone`, and the parent may send :class:`CancelWork`: the child looks for it after
every generated token and, if it names the running task, ends generation there (the result's
``finish_reason`` is ``"cancelled"``). Once loaded, the child reports what it runs on
(:class:`EngineInfo`) on a second, one-way pipe.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edgecap.config import Settings
from edgecap.engine.hardware import Backend
from edgecap.errors import EdgecapError, InferenceError, WorkerCrashed, WorkerStopped, error_class
from edgecap.logs import LogSetup
from edgecap.records import CaptionRequest, CaptionResult, TokenPiece

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess
    from multiprocessing.synchronize import Event

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class CaptionEngine(Protocol):
    """The part of :class:`edgecap.engine.engine.Engine` the worker uses."""

    backend: Backend

    def stream(
        self, request: CaptionRequest, *, cancelled: Callable[[], bool] | None = None
    ) -> Iterator[TokenPiece | CaptionResult]: ...

    def close(self) -> None: ...


EngineFactory = Callable[[str | None], CaptionEngine]
PieceSink = Callable[[str], None]


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


@dataclass(frozen=True)
class WorkPiece:
    """A piece of the running task's text, sent by the child as it is generated."""

    task_uuid: str
    text: str


@dataclass(frozen=True)
class CancelWork:
    """Parent to child: stop generating for this task (ignored if it is not running)."""

    task_uuid: str


@dataclass(frozen=True)
class EngineInfo:
    """What the engine process runs on, as llama.cpp reports it once the model is loaded."""

    backend: str  # "CPU", "CUDA", "Metal", ...
    gpu_offload: bool


class Worker:
    """The parent's handle on the engine process. :meth:`run` is for one thread at a time."""

    def __init__(self, engine_factory: EngineFactory, *, log_setup: LogSetup | None = None) -> None:
        """``log_setup``: how the engine process logs (None: it configures no logging)."""
        self._factory = engine_factory
        self._log_setup = log_setup
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # held while a task is in the child
        self._send_lock = threading.Lock()  # the dispatcher and cancel() both write to the pipe
        self._stopping = threading.Event()
        self._process: SpawnProcess | None = None
        self._conn: Connection | None = None
        self._info_conn: Connection | None = None
        self._info: EngineInfo | None = None
        self._loaded: Event | None = None
        self._running: str | None = None  # the task_uuid in the child
        self.restarts = 0

    @property
    def ready(self) -> bool:
        """The child is alive and has loaded the default model."""
        process, loaded = self._process, self._loaded
        return bool(process and loaded and process.is_alive() and loaded.is_set())

    @property
    def info(self) -> EngineInfo | None:
        """What the engine process runs on; None until it has loaded a model."""
        with self._send_lock:
            conn = self._info_conn
            try:
                while conn is not None and conn.poll():
                    self._info = conn.recv()
            except (OSError, EOFError):  # that child is gone; its report stays true of the build
                pass
            return self._info

    def start(self) -> None:
        """Start the child; it loads the default model in the background."""
        self._stopping.clear()
        self._spawn()

    def run(self, item: WorkItem, on_piece: PieceSink | None = None) -> CaptionResult:
        """Caption ``item`` in the child; ``on_piece`` gets its text as it is generated.

        Raises the task's error, or :class:`WorkerCrashed`.
        """
        with self._lock:
            if self._stopping.is_set() or self._process is None or self._conn is None:
                raise WorkerStopped("The worker is stopping; the task will run after a restart.")
            if not self._process.is_alive():  # it died while idle (e.g. loading): not this task
                self._restart()
            try:
                with self._send_lock:
                    self._conn.send(item)
                    self._running = item.task_uuid
                reply = self._await_reply(item.task_uuid, on_piece)
            except (OSError, EOFError):
                reply = None
            finally:
                with self._send_lock:
                    self._running = None
            if reply is None:
                raise self._crashed()
        if reply.error is not None:
            raise reply.error.to_exception()
        if reply.result is None or reply.task_uuid != item.task_uuid:
            raise InferenceError(f"The worker answered for the wrong task ({reply.task_uuid}).")
        return reply.result

    def cancel(self, task_uuid: str) -> bool:
        """Ask the child to stop generating ``task_uuid`` at its next token.

        True if that task is the one running now; its :meth:`run` then returns a result whose
        ``finish_reason`` is ``"cancelled"`` (or whatever it finished with, if it was quicker).
        """
        with self._send_lock:
            if self._running != task_uuid or self._conn is None:
                return False
            try:
                self._conn.send(CancelWork(task_uuid))
            except OSError:  # the child is gone: run() reports that
                return False
            return True

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
                with self._send_lock:
                    if self._info_conn is not None:
                        self._info_conn.close()
                    self._info_conn = None
                # Drop the child and its Event now: their semaphores are released here, not
                # reported as leaked by multiprocessing's resource tracker at exit.
                self._process = self._loaded = None
            finally:
                self._lock.release()

    def _spawn(self) -> None:
        parent_end, child_end = self._context.Pipe()
        info_end, child_info_end = self._context.Pipe(duplex=False)
        self._loaded = self._context.Event()
        self._process = self._context.Process(
            target=serve,
            args=(self._factory, child_end, self._loaded, child_info_end, self._log_setup),
            name="edgecap-engine",
            daemon=True,
        )
        self._process.start()
        child_end.close()  # else the parent would never see EOF when the child dies
        child_info_end.close()
        with self._send_lock:
            if self._info_conn is not None:
                self._info_conn.close()
            self._conn, self._info_conn = parent_end, info_end

    def _await_reply(self, task_uuid: str, on_piece: PieceSink | None) -> WorkDone | None:
        """The child's reply (its pieces passed to ``on_piece``), or None if it died first."""
        assert self._process is not None and self._conn is not None
        while True:
            multiprocessing.connection.wait([self._conn, self._process.sentinel])
            if not self._conn.poll():  # died without a word
                return None
            try:
                message: WorkDone | WorkPiece = self._conn.recv()
            except EOFError:
                return None
            if not isinstance(message, WorkPiece):
                return message
            if on_piece is not None and message.task_uuid == task_uuid:
                on_piece(message.text)

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
    factory: EngineFactory,
    conn: Connection,
    loaded: Event,
    info: Connection,
    log_setup: LogSetup | None = None,
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
        _report(info, engines.get(None))
        loaded.set()
        logger.info("Loaded the default model in %.1f s", time.perf_counter() - started)
    except Exception as exc:  # reported to the first task that needs the default model
        logger.warning("Could not load the default model: %s", exc)
    try:
        while (item := _receive(conn)) is not None:
            conn.send(_caption(engines, item, conn))
            if engines.holds(None) and not loaded.is_set():
                _report(info, engines.get(None))
                loaded.set()  # the default model loaded late (it had failed at start)
    finally:
        engines.close()


def _report(info: Connection, engine: CaptionEngine) -> None:
    backend = engine.backend
    info.send(EngineInfo(backend=backend.name, gpu_offload=backend.gpu_offload))


def _receive(conn: Connection) -> WorkItem | None:
    """The next work item, skipping cancellations of tasks that have already finished."""
    while True:
        try:
            message: WorkItem | CancelWork | None = conn.recv()
        except EOFError:  # the parent is gone
            return None
        if not isinstance(message, CancelWork):
            return message


class _CancelCheck:
    """Answers whether the parent has cancelled this task, reading the pipe without waiting."""

    def __init__(self, conn: Connection, task_uuid: str) -> None:
        self.conn = conn
        self.task_uuid = task_uuid
        self.cancelled = False

    def __call__(self) -> bool:
        while not self.cancelled and self.conn.poll():
            message = self.conn.recv()  # only CancelWork is sent while a task runs
            self.cancelled = isinstance(message, CancelWork) and message.task_uuid == self.task_uuid
        return self.cancelled


def _caption(engines: _Engines, item: WorkItem, conn: Connection) -> WorkDone:
    result: CaptionResult | None = None
    try:
        engine = engines.get(item.model)
        for out in engine.stream(item.request, cancelled=_CancelCheck(conn, item.task_uuid)):
            if isinstance(out, TokenPiece):
                conn.send(WorkPiece(item.task_uuid, out.text))
            else:
                result = out
    except Exception as exc:
        return WorkDone(item.task_uuid, None, WorkError.from_exception(exc))
    if result is None:
        error = InferenceError("The engine ended the caption without a result.")
        return WorkDone(item.task_uuid, None, WorkError.from_exception(error))
    return WorkDone(item.task_uuid, result)
