"""TaskService: the one door through which the server runs caption tasks.

The server validates a task, loads its image and hands a :class:`CaptionJob` to
:meth:`TaskService.submit`, which stores it durably and returns at once. A dispatcher thread
takes queued tasks in order and runs each in the engine process (:mod:`edgecap.runtime.worker`);
``settings.parallel`` dispatchers run at once, and the engine decodes their tasks in one batch.
It records the result in the store (:mod:`edgecap.runtime.tasks`), queues its webhook/upload
deliveries (:mod:`edgecap.runtime.delivery`) and wakes whoever awaits :meth:`TaskService.wait`.

A task runs at most :data:`MAX_ATTEMPTS` times: a crash of the engine process, or of the whole
server, during a task uses one attempt (attempts are stored, so they count across restarts);
after the last one the task fails with ``inferenceError``. A task running longer than
``settings.task_timeout_s`` has its engine process killed and fails with ``timeoutProvider``.
A result that cannot be written (full disk) fails the task with ``insufficientStorage``.
See docs/service-seam.md for the contract with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from functools import partial
from typing import Any

from edgecap.config import Settings
from edgecap.errors import (
    EdgecapError,
    InferenceError,
    NotFound,
    RateLimited,
    TaskConflict,
    TaskExpired,
    TimeoutProvider,
)
from edgecap.logs import LogSetup
from edgecap.protocol import (
    RESULT_TASK_TYPE,
    error_envelope,
    error_object,
    result_item,
    success_envelope,
)
from edgecap.records import CaptionResult, TokenPiece
from edgecap.runtime.delivery import Deliverer, outgoing_for
from edgecap.runtime.failures import (
    cancelled,
    client_uuid,
    gave_up,
    interrupted,
    record_disk_full,
    storage_error,
)
from edgecap.runtime.listeners import Listener, Listeners, Waiters
from edgecap.runtime.messages import EngineInfo, WorkItem
from edgecap.runtime.stats import ServiceStats
from edgecap.runtime.storage import Reserve
from edgecap.runtime.tasks import (
    CaptionJob,
    ClaimedTask,
    Clock,
    TaskRecord,
    TaskStore,
)
from edgecap.runtime.worker import (
    DefaultEngineFactory,
    EngineFactory,
    Worker,
    WorkerCrashed,
    WorkerStopped,
    WorkerTimedOut,
)

__all__ = ["CaptionJob", "TaskConflict", "TaskExpired", "TaskRecord", "TaskService"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
FINISH_RETRIES = 3  # writes of a result, before failing the task with insufficientStorage
FINISH_RETRY_DELAY_S = 0.5
PURGE_INTERVAL_S = 60.0


class TaskService:
    """Durable task queue in front of the engine process. Thread-safe; ``wait`` is async."""

    def __init__(
        self,
        settings: Settings,
        engine_factory: EngineFactory | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.store = TaskStore(settings.db_path, clock=clock)
        self._worker = Worker(
            engine_factory or DefaultEngineFactory(settings), log_setup=LogSetup.of(settings)
        )
        self._deliverer = Deliverer(self.store, settings)
        self._reserve = Reserve(settings.home)
        self._waiters = Waiters()
        self._listeners = Listeners()
        self._metrics = ServiceStats()
        self._submit_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_purge = 0.0

    @property
    def ready(self) -> bool:
        """The engine process is up and has loaded the default model."""
        return self._worker.ready

    def start(self) -> None:
        """Requeue what a previous run left unfinished, then start the worker and delivery."""
        self._reserve.ensure()
        requeued = self.store.requeue_unfinished()
        if requeued:
            logger.info("Requeued %d task(s) left unfinished by the previous run", requeued)
        self._worker.start()
        self._deliverer.start()
        self._threads = [
            threading.Thread(target=self._dispatch_loop, name=f"edgecap-dispatch-{i}", daemon=True)
            for i in range(self.settings.parallel)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop everything. A task in flight is interrupted and runs again after a restart;
        queued tasks and pending deliveries stay in the store."""
        self._stopping.set()
        self._wake.set()
        self._worker.stop()
        for thread in self._threads:
            thread.join()
        self._deliverer.stop()
        self.store.close()

    def submit(self, job: CaptionJob) -> TaskRecord:
        """Store ``job`` and queue it; returns once it is durable (see :meth:`submit_all`)."""
        return self.submit_all([job])[0]

    def submit_all(self, jobs: list[CaptionJob]) -> list[TaskRecord]:
        """Store the jobs of one task and queue them, all or none; returns once durable.

        The same taskUUID with the same fingerprint (and owner) returns the existing record
        (clients resend on timeouts); with another fingerprint or owner it raises
        :class:`TaskConflict`. A queue without room for every new job raises
        :class:`RateLimited` with ``extra["retry_after"]`` in seconds; a full disk raises
        :class:`InsufficientStorage`.
        """
        with self._submit_lock:
            known: dict[str, TaskRecord] = {}
            for job in jobs:
                identity = self.store.identity(job.task_uuid)
                if identity is None:
                    continue
                if identity != (job.fingerprint, job.owner):
                    raise TaskConflict(
                        f"The taskUUID {job.task_uuid} was already used for a different task. "
                        "Give every new task a new UUID v4; resend a task unchanged to get its "
                        "status.",
                        parameter="taskUUID",
                    )
                known[job.task_uuid] = self.store.get(job.task_uuid)
            new = [job for job in jobs if job.task_uuid not in known]
            if new:
                self._refuse_if_full(len(new))
                try:
                    added = self.store.add_all(new)
                except sqlite3.OperationalError as exc:
                    raise storage_error(exc) from exc
                known.update((r.task_uuid, r) for r in added)
        self._wake.set()
        return [known[job.task_uuid] for job in jobs]

    def _refuse_if_full(self, needed: int) -> None:
        waiting = self.store.count("queued")
        if waiting + needed > self.settings.queue_size:
            retry_after = self.retry_after(waiting)
            raise RateLimited(
                f"The queue has no room for {needed} more task(s) ({waiting} waiting, "
                f"queue_size {self.settings.queue_size}). Retry in about {retry_after} s, or "
                "raise queue_size (EDGECAP_QUEUE_SIZE).",
                retry_after=retry_after,
            )

    async def wait(self, task_uuid: str, timeout: float) -> TaskRecord:
        """The task's record once it has finished, or its current record after ``timeout`` s.

        The store is read in a worker thread, never on the event loop.
        """
        record = await asyncio.to_thread(self.store.get, task_uuid)
        if record.finished:
            return record
        event = self._waiters.add(task_uuid)
        try:
            # it may have finished before we registered
            record = await asyncio.to_thread(self.store.get, task_uuid)
            if not record.finished:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
                record = await asyncio.to_thread(self.store.get, task_uuid)
        finally:
            self._waiters.remove(task_uuid, event)
        return record

    async def stream(
        self, job: CaptionJob, timeout: float, *, pieces: bool = True
    ) -> AsyncGenerator[TokenPiece | CaptionResult, None]:
        """Queue ``job`` (a new taskUUID) and follow it: with ``pieces``, its text pieces as
        they are generated, then its :class:`CaptionResult`.

        Raises what :meth:`submit` raises, the task's own error, or a ``timeoutProvider`` error
        (504) when it has not finished within ``timeout`` s — it still runs, and its record
        stays in the store. Pieces join up to the result's text before the engine strips it.
        """
        loop = asyncio.get_running_loop()
        listener = self._listeners.add(job.task_uuid, pieces=pieces)
        try:
            if await asyncio.to_thread(self.store.fingerprint, job.task_uuid) is not None:
                raise TaskConflict(
                    f"The taskUUID {job.task_uuid} was used before; a streamed task needs a "
                    "new one.",
                    parameter="taskUUID",
                )
            await asyncio.to_thread(self.submit, job)
            deadline = loop.time() + timeout
            while True:
                try:
                    event = await asyncio.wait_for(
                        listener.queue.get(), max(deadline - loop.time(), 0.0)
                    )
                except asyncio.TimeoutError:
                    raise TimeoutProvider(
                        f"The task did not finish within {timeout:g} s (sync_timeout_s); it "
                        f"goes on running as {job.task_uuid}.",
                    ) from None
                if isinstance(event, EdgecapError):
                    raise event
                yield event
                if isinstance(event, CaptionResult):
                    return
        finally:
            self._listeners.remove(job.task_uuid, listener)

    def get(
        self, task_uuid: str, *, owner: str | None = None, with_task: bool = True
    ) -> TaskRecord:
        """The task's record; raises ``NotFound`` (taskNotFound) or :class:`TaskExpired`.

        A task another key sent is answered as if it did not exist.
        """
        identity = self.store.identity(task_uuid)
        if identity is not None and identity[1] != owner:
            raise NotFound(
                f"No task has the taskUUID {task_uuid}. Check the UUID: a task is known "
                "only to the server that accepted it, and only to the key that sent it.",
                parameter="taskUUID",
            )
        return self.store.get(task_uuid, with_task=with_task)

    def watch(self, task_uuid: str) -> Listener:
        """A listener on the task: its text pieces as they are generated, then its
        ``CaptionResult`` or error once its record is final. Open it before :meth:`submit` to
        miss nothing; call from a coroutine; close it when done."""
        return self._listeners.add(task_uuid, pieces=True)

    def cancel(self, task_uuid: str) -> bool:
        """Stop a task: a queued one is finished at once, a running one at its next token.

        Either way it ends with a ``taskCancelled`` error and frees its place. False if the
        task is not queued or running (finished, unknown, or already past generation).
        """
        job = self.store.withdraw(task_uuid)
        if job is not None:
            self._finish_error(job, cancelled(job, 0))
            return True
        try:
            running = self.store.get(task_uuid).status == "processing"
        except EdgecapError:  # unknown or expired
            return False
        if running:
            self._worker.cancel(task_uuid)
        return running

    def engine_info(self) -> EngineInfo | None:
        """What the engine process runs on (backend), once it has loaded a model."""
        return self._worker.info

    def running(self) -> int:
        """Tasks being captioned now (0 or 1 with one engine process)."""
        return self.store.count("processing")

    def queue_depth(self) -> int:
        """Tasks waiting for the worker (not counting the ones it is running)."""
        return self.store.count("queued")

    def purge_expired(self) -> int:
        """Delete results past their ttl now (also done every minute). Returns how many."""
        purged = self.store.purge_expired()
        if purged:
            logger.info("Purged %d expired task result(s)", purged)
        return purged

    def stats(self) -> dict[str, Any]:
        """Figures for /metrics: queue, tasks by status, latency samples and histograms (as
        prometheus metric families), tokens, worker, deliveries."""
        return {
            "queue_depth": self.queue_depth(),
            "tasks": self.store.counts(),
            "latency_seconds": self._metrics.latencies(),
            "latency_histograms": self._metrics.histograms(),
            "tokens": self._metrics.tokens(),
            "worker": {"ready": self.ready, "restarts": self._worker.restarts},
            "deliveries": self.store.delivery_counts(),
        }

    # ------------------------------------------------------------------ the dispatcher

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._purge_if_due()
                claimed = self.store.claim_next()
                if claimed is None:
                    self._wake.wait(PURGE_INTERVAL_S)
                    self._wake.clear()
                    continue
                self._wake.set()  # another dispatcher may take the next task meanwhile
                self._run_or_fail(claimed)
            except Exception:  # keep serving; the task stays in the store
                logger.exception("The task dispatcher failed; retrying in a second")
                self._stopping.wait(1.0)

    def _run_or_fail(self, claimed: ClaimedTask) -> None:
        """Run a claimed task; if running or recording it breaks unexpectedly, fail it with
        ``inferenceError`` rather than leave it claimed (and re-run at every restart)."""
        try:
            self._run(claimed)
        except Exception as exc:
            job = claimed.job
            logger.exception("Task %s could not be completed; failing it", job.task_uuid)
            failure = InferenceError(
                f"The server could not complete this task ({type(exc).__name__}). "
                "Send it again under a new taskUUID; if it fails again, report it."
            )
            # The server's default ttl, in case the task's own ttl is what broke.
            self._finish_error(replace(job, ttl_s=None), failure)

    def _run(self, claimed: ClaimedTask) -> None:
        job = claimed.job
        if claimed.attempts > MAX_ATTEMPTS:  # the server stopped during every earlier attempt
            self._finish_error(job, interrupted(claimed.attempts - 1))
            return
        started = time.perf_counter()
        stream = self._listeners.wants_pieces(job.task_uuid)
        on_piece = partial(self._listeners.piece, job.task_uuid) if stream else None
        try:
            item = WorkItem(job.task_uuid, job.model, job.request, stream=stream)
            result = self._worker.run(item, on_piece, timeout_s=self.settings.task_timeout_s)
        except WorkerTimedOut as exc:
            self._finish_error(job, exc)
            return
        except WorkerStopped:
            self.store.release(job.task_uuid, refund_attempt=True)
            return
        except WorkerCrashed as exc:
            if claimed.attempts < MAX_ATTEMPTS:
                logger.warning("Task %s: %s Retrying it.", job.task_uuid, exc.message)
                self.store.release(job.task_uuid, refund_attempt=False)
                return
            self._finish_error(job, gave_up(claimed.attempts, exc))
            return
        except EdgecapError as exc:
            self._finish_error(job, exc)
            return
        if result.finish_reason == "cancelled":
            self._finish_error(job, cancelled(job, result.generated_tokens))
            return
        self._metrics.record(result, claimed.queued_seconds, time.perf_counter() - started)
        self._finish_success(job, result)

    def _finish_success(self, job: CaptionJob, result: CaptionResult) -> None:
        item = result_item(
            result,
            client_uuid(job),
            include_cost=job.include_cost,
            cost_per_second=self.settings.cost_per_second,
        )
        response = success_envelope(item)
        self._finish(job, response, result=item, error=None, text=result.text, outcome=result)

    def _finish_error(self, job: CaptionJob, exc: EdgecapError) -> None:
        error = error_object(exc, task_type=RESULT_TASK_TYPE, task_uuid=client_uuid(job))
        self._finish(job, error_envelope(error), result=None, error=error, text=None, outcome=exc)

    def _finish(
        self,
        job: CaptionJob,
        response: dict[str, Any],
        *,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        text: str | None,
        outcome: CaptionResult | EdgecapError,
    ) -> None:
        """Record the outcome. A full disk is retried; if it stays full the task fails with
        ``insufficientStorage`` — a small write, given the disk reserve's space if need be —
        and if even that fails the task stays claimed and counts its attempt at restart."""
        ttl_s = job.ttl_s or self.settings.result_ttl_s
        for attempt in range(FINISH_RETRIES):
            try:
                self.store.finish(
                    job.task_uuid,
                    result=result,
                    error=error,
                    response=response,
                    ttl_s=ttl_s,
                    outgoing=outgoing_for(job, response, text),
                )
                break
            except sqlite3.OperationalError as exc:
                logger.warning("Task %s: cannot record its result (%s)", job.task_uuid, exc)
                if attempt + 1 < FINISH_RETRIES:
                    self._stopping.wait(FINISH_RETRY_DELAY_S * (attempt + 1))
        else:
            record_disk_full(self.store, self._reserve, job, ttl_s)
        self._deliverer.wake()
        self._waiters.notify(job.task_uuid)
        self._listeners.finished(job.task_uuid, outcome)  # after the record is final

    def _purge_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL_S
            self.purge_expired()

    def retry_after(self, waiting: int) -> int:
        """Seconds until a queue slot is likely free: the tasks ahead at the recent pace."""
        per_task = self._metrics.typical_run_seconds() / self.settings.parallel
        return max(1, math.ceil((waiting + 1) * per_task))
