"""The durable task store: caption jobs, their results and the delivery outbox, in SQLite.

A task is written here, image pixels included, before the server acknowledges it; from then on
it survives a crash of the server. Its life: ``queued`` → ``processing`` (claimed by the
dispatcher; ``attempts`` counts the claims) → ``success`` or ``error``, with the result kept
until ``expires_at``. :meth:`TaskStore.purge_expired` then deletes it and leaves a *tombstone*,
so the UUID answers ``taskExpired`` instead of ``taskNotFound``. Deliveries (webhooks, uploads)
are written to the outbox in the same transaction that finishes the task, so none is lost.

Durability: WAL journal with ``synchronous=FULL``. Under WAL, ``NORMAL`` already survives the
process being killed, but a power cut may roll back the last commits, which would lose tasks
that clients were told were accepted. ``FULL`` costs one fsync per commit (milliseconds), next
to captions that take seconds.

The schema and its migrations are in :mod:`edgecap.runtime.migrations`; the records and their
row codecs in :mod:`edgecap.runtime.task_records`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgecap.config import MAX_TTL_S
from edgecap.errors import NotFound, TaskExpired
from edgecap.runtime.migrations import migrate
from edgecap.runtime.task_records import (
    RECORD_COLUMNS,
    UNFINISHED,
    CaptionJob,
    ClaimedTask,
    Delivery,
    DeliveryKind,
    Outgoing,
    TaskRecord,
    TaskStatus,
    decode_job,
    delivery_of,
    dumps_or_none,
    encode_job,
    image_key,
    record_of,
)

__all__ = [
    "UNFINISHED",
    "CaptionJob",
    "ClaimedTask",
    "Clock",
    "Delivery",
    "DeliveryKind",
    "Outgoing",
    "TaskRecord",
    "TaskStatus",
    "TaskStore",
]

Clock = Callable[[], float]

TOMBSTONE_SECONDS = 30 * 24 * 3600  # how long an expired UUID still answers taskExpired


class TaskStore:
    """Tasks, results and deliveries in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path, *, clock: Clock = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock  # wall-clock time: timestamps outlive the process
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        migrate(self._db, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ tasks

    def fingerprint(self, task_uuid: str) -> str | None:
        """The fingerprint stored under ``task_uuid`` (also for expired tasks), or None."""
        known = self.identity(task_uuid)
        return known[0] if known else None

    def identity(self, task_uuid: str) -> tuple[str, str | None] | None:
        """``(fingerprint, owner)`` stored under ``task_uuid`` (also when expired), or None."""
        row = self._one(
            "SELECT fingerprint, owner FROM tasks WHERE task_uuid = ? "
            "UNION ALL SELECT fingerprint, owner FROM tombstones WHERE task_uuid = ?",
            (task_uuid, task_uuid),
        )
        return (row["fingerprint"], row["owner"]) if row else None

    def add(self, job: CaptionJob) -> TaskRecord:
        """Store a new queued task durably (pixels included) and return its record."""
        return self.add_all([job])[0]

    def add_all(self, jobs: Sequence[CaptionJob]) -> list[TaskRecord]:
        """Store new queued tasks durably in one transaction (all or none)."""
        with self._write() as db:
            for job in jobs:
                image = job.request.image
                key = image_key(image) if image else None
                if image is not None:
                    db.execute(
                        "INSERT OR IGNORE INTO images (key, rgb) VALUES (?, ?)", (key, image.rgb)
                    )
                db.execute(
                    "INSERT INTO tasks (task_uuid, fingerprint, status, job, image_key, "
                    "original_task, created_at, owner) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                    (
                        job.task_uuid,
                        job.fingerprint,
                        encode_job(job),
                        key,
                        json.dumps(job.original_task),
                        self.clock(),
                        job.owner,
                    ),
                )
        return [self.get(job.task_uuid) for job in jobs]

    def get(self, task_uuid: str, *, with_task: bool = True) -> TaskRecord:
        """The task's record; raises :class:`NotFound` or :class:`TaskExpired`.

        ``with_task=False`` skips reading the stored task (``original_task`` is then ``{}``):
        for the further jobs of a multi-image task, whose stored task is the first one's.
        """
        columns = "*" if with_task else ", ".join(c for c in RECORD_COLUMNS if c != "original_task")
        row = self._one(f"SELECT {columns} FROM tasks WHERE task_uuid = ?", (task_uuid,))
        if row is None:
            if self._one("SELECT 1 FROM tombstones WHERE task_uuid = ?", (task_uuid,)) is None:
                raise NotFound(
                    f"No task has the taskUUID {task_uuid}. Check the UUID: a task is known "
                    "only to the server that accepted it.",
                    parameter="taskUUID",
                )
            raise _expired(task_uuid)
        if row["expires_at"] is not None and row["expires_at"] <= self.clock():
            raise _expired(task_uuid)  # not purged yet, but gone all the same
        return record_of(row)

    def claim_next(self) -> ClaimedTask | None:
        """Move the oldest queued task to ``processing`` and return it, or None if none."""
        now = self.clock()
        with self._write() as db:
            row = db.execute(
                "SELECT tasks.*, images.rgb FROM tasks LEFT JOIN images "
                "ON images.key = tasks.image_key WHERE status = 'queued' "
                "ORDER BY created_at, tasks.rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE tasks SET status = 'processing', attempts = attempts + 1, "
                "started_at = ? WHERE task_uuid = ?",
                (now, row["task_uuid"]),
            )
        return ClaimedTask(
            job=decode_job(row),
            attempts=row["attempts"] + 1,
            queued_seconds=max(now - row["created_at"], 0.0),
        )

    def withdraw(self, task_uuid: str) -> CaptionJob | None:
        """Take a still-queued task out of the queue (claimed, but never to be run) and return
        its job, for the caller to finish; None if it was not queued (running, finished...)."""
        with self._write() as db:
            row = db.execute(
                "SELECT tasks.*, NULL AS rgb FROM tasks WHERE task_uuid = ? AND status = 'queued'",
                (task_uuid,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE tasks SET status = 'processing', started_at = ? WHERE task_uuid = ?",
                (self.clock(), task_uuid),
            )
        return decode_job(row)

    def release(self, task_uuid: str, *, refund_attempt: bool) -> None:
        """Put a claimed task back at the head of the queue (it keeps its place in line)."""
        with self._write() as db:
            db.execute(
                "UPDATE tasks SET status = 'queued', started_at = NULL, "
                "attempts = attempts - ? WHERE task_uuid = ? AND status = 'processing'",
                (int(refund_attempt), task_uuid),
            )

    def requeue_unfinished(self) -> int:
        """After a restart: tasks left ``processing`` go back to ``queued``. Returns how many."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET status = 'queued', started_at = NULL WHERE status = 'processing'"
            )
            return cursor.rowcount

    def finish(
        self,
        task_uuid: str,
        *,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        response: dict[str, Any],
        ttl_s: int,
        outgoing: Sequence[Outgoing] = (),
    ) -> TaskRecord:
        """Record a task's outcome and queue its deliveries, in one transaction.

        The task's pixels are deleted unless another unfinished task uses the same image.
        ``ttl_s`` is clamped to ``[0, MAX_TTL_S]`` (a huge ttl must not overflow the expiry).
        """
        now = self.clock()
        expires_at = now + min(max(ttl_s, 0), MAX_TTL_S)
        with self._write() as db:
            row = db.execute(
                "SELECT image_key FROM tasks WHERE task_uuid = ?", (task_uuid,)
            ).fetchone()
            db.execute(
                "UPDATE tasks SET status = ?, result = ?, error = ?, response = ?, "
                "finished_at = ?, expires_at = ?, image_key = NULL WHERE task_uuid = ?",
                (
                    "success" if error is None else "error",
                    dumps_or_none(result),
                    dumps_or_none(error),
                    json.dumps(response),
                    now,
                    expires_at,
                    task_uuid,
                ),
            )
            if row is not None and row["image_key"] is not None:
                db.execute(
                    "DELETE FROM images WHERE key = ? AND NOT EXISTS "
                    "(SELECT 1 FROM tasks WHERE image_key = images.key)",
                    (row["image_key"],),
                )
            db.executemany(
                "INSERT INTO outbox (task_uuid, kind, url, body, content_type, status, "
                "next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                [(task_uuid, o.kind, o.url, o.body, o.content_type, now) for o in outgoing],
            )
        return self.get(task_uuid)

    def purge_expired(self) -> int:
        """Delete results past ``expires_at``, leaving tombstones. Returns how many."""
        now = self.clock()
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO tombstones (task_uuid, fingerprint, expired_at, owner) "
                "SELECT task_uuid, fingerprint, expires_at, owner FROM tasks WHERE expires_at <= ?",
                (now,),
            )
            purged = db.execute("DELETE FROM tasks WHERE expires_at <= ?", (now,)).rowcount
            db.execute(
                "DELETE FROM outbox WHERE status != 'pending' AND task_uuid IN "
                "(SELECT task_uuid FROM tombstones)"
            )
            db.execute("DELETE FROM tombstones WHERE expired_at <= ?", (now - TOMBSTONE_SECONDS,))
            return purged

    def count(self, status: TaskStatus) -> int:
        row = self._one("SELECT count(*) AS n FROM tasks WHERE status = ?", (status,))
        return int(row["n"]) if row else 0

    def counts(self) -> dict[str, int]:
        """Tasks by status, plus ``expired`` (tombstones)."""
        out = dict.fromkeys(("queued", "processing", "success", "error", "expired"), 0)
        with self._lock:
            for row in self._db.execute("SELECT status, count(*) FROM tasks GROUP BY status"):
                out[row[0]] = row[1]
            out["expired"] = self._db.execute("SELECT count(*) FROM tombstones").fetchone()[0]
        return out

    # ------------------------------------------------------------------ outbox

    def due_deliveries(self, limit: int, *, exclude: Sequence[int] = ()) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first."""
        marks = ",".join("?" * len(exclude))
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? "
                f"AND id NOT IN ({marks}) ORDER BY next_attempt_at, id LIMIT ?",
                (self.clock(), *exclude, limit),
            ).fetchall()
        return [delivery_of(row) for row in rows]

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due (clock time), or None."""
        row = self._one("SELECT min(next_attempt_at) AS t FROM outbox WHERE status = 'pending'")
        return row["t"] if row else None

    def delivery_done(self, delivery_id: int, *, attempts: int) -> None:
        self._set_delivery(delivery_id, "delivered", attempts, None, None)

    def delivery_retry(
        self, delivery_id: int, *, attempts: int, delay_s: float, error: str
    ) -> None:
        self._set_delivery(delivery_id, "pending", attempts, self.clock() + delay_s, error)

    def delivery_failed(self, delivery_id: int, *, attempts: int, error: str) -> None:
        self._set_delivery(delivery_id, "failed", attempts, None, error)

    def delivery_counts(self) -> dict[str, int]:
        out = dict.fromkeys(("pending", "delivered", "failed"), 0)
        with self._lock:
            for row in self._db.execute("SELECT status, count(*) FROM outbox GROUP BY status"):
                out[row[0]] = row[1]
        return out

    # ------------------------------------------------------------------ plumbing

    def _set_delivery(
        self, delivery_id: int, status: str, attempts: int, next_at: float | None, error: str | None
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE outbox SET status = ?, attempts = ?, "
                "next_attempt_at = coalesce(?, next_attempt_at), last_error = ? WHERE id = ?",
                (status, attempts, next_at, error, delivery_id),
            )

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, params).fetchone()
            return row

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def _expired(task_uuid: str) -> TaskExpired:
    return TaskExpired(
        f"The result of task {task_uuid} has expired and was deleted. Results are kept for "
        "`ttl` seconds after a task finishes (server default: result_ttl_s); send the task "
        "again under a new taskUUID, with a larger ttl if you need it longer.",
        parameter="taskUUID",
    )
