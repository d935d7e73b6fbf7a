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

Schema changes are appended to :data:`MIGRATIONS`, never edited; ``PRAGMA user_version``
records how many have been applied.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from edgecap.errors import EdgecapError, NotFound, TaskExpired
from edgecap.records import CaptionRequest, LoadedImage, Sampling

TaskStatus = Literal["queued", "processing", "success", "error"]
DeliveryKind = Literal["webhook", "upload"]
Clock = Callable[[], float]

UNFINISHED = ("queued", "processing")
TOMBSTONE_SECONDS = 30 * 24 * 3600  # how long an expired UUID still answers taskExpired
MAX_TTL_S = 10 * 365 * 24 * 3600  # results are kept at most this long, whatever ttl asks

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        task_uuid     TEXT PRIMARY KEY,
        fingerprint   TEXT NOT NULL,
        status        TEXT NOT NULL,
        job           TEXT NOT NULL,     -- JSON: the CaptionJob without pixels
        image_key     TEXT,              -- images.key while the task is unfinished
        original_task TEXT NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        created_at    REAL NOT NULL,
        started_at    REAL,
        finished_at   REAL,
        expires_at    REAL,
        result        TEXT,
        error         TEXT,
        response      TEXT
    );
    CREATE INDEX tasks_by_status ON tasks (status, created_at);
    CREATE INDEX tasks_by_expiry ON tasks (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE images (
        key TEXT PRIMARY KEY,            -- sha256 of the source + budgeted size
        rgb BLOB NOT NULL
    );
    CREATE TABLE tombstones (
        task_uuid   TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        expired_at  REAL NOT NULL
    );
    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY,
        task_uuid       TEXT NOT NULL,
        kind            TEXT NOT NULL,   -- webhook | upload
        url             TEXT NOT NULL,
        body            BLOB NOT NULL,
        content_type    TEXT NOT NULL,
        status          TEXT NOT NULL,   -- pending | delivered | failed
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
    """,
    # 2: the owning API key (a hash; NULL when the server has no keys)
    """
    ALTER TABLE tasks ADD COLUMN owner TEXT;
    ALTER TABLE tombstones ADD COLUMN owner TEXT;
    """,
)


@dataclass(frozen=True)
class CaptionJob:
    """Everything the worker needs for one caption task, already validated by the server."""

    task_uuid: str
    request: CaptionRequest  # the image already loaded
    model: str | None  # registry name or alias; None = the server's default
    include_cost: bool
    webhook_url: str | None
    upload_endpoint: str | None
    ttl_s: int | None
    fingerprint: str  # sha256 of the canonical JSON of the original task (idempotency)
    original_task: dict[str, Any]  # the task object as the client sent it
    owner: str | None = None  # which API key (a hash) sent it; None without keys


@dataclass(frozen=True)
class TaskRecord:
    """What the store knows about a task, as the API reports it."""

    task_uuid: str
    status: TaskStatus
    result: dict[str, Any] | None  # the success item
    error: dict[str, Any] | None  # the error object
    original_task: dict[str, Any]
    response: dict[str, Any] | None  # the envelope as sent: {"data": [...]} or {"errors": [...]}
    expires_at: float | None
    owner: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED


@dataclass(frozen=True)
class ClaimedTask:
    """A task the dispatcher took off the queue."""

    job: CaptionJob
    attempts: int  # including this one
    queued_seconds: float  # from submission to this claim


@dataclass(frozen=True)
class Outgoing:
    """A delivery to make once a task has finished."""

    kind: DeliveryKind
    url: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Delivery:
    """A pending delivery from the outbox."""

    id: int
    task_uuid: str
    attempts: int  # made so far
    outgoing: Outgoing


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
                image_key = _image_key(image) if image else None
                if image is not None:
                    db.execute(
                        "INSERT OR IGNORE INTO images (key, rgb) VALUES (?, ?)",
                        (image_key, image.rgb),
                    )
                db.execute(
                    "INSERT INTO tasks (task_uuid, fingerprint, status, job, image_key, "
                    "original_task, created_at, owner) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                    (
                        job.task_uuid,
                        job.fingerprint,
                        _encode_job(job),
                        image_key,
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
        return _record(row)

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
            job=_decode_job(row),
            attempts=row["attempts"] + 1,
            queued_seconds=max(now - row["created_at"], 0.0),
        )

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
                    _dumps(result),
                    _dumps(error),
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
        return [_delivery(row) for row in rows]

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


def migrate(db: sqlite3.Connection, path: Path, migrations: Sequence[str] = MIGRATIONS) -> None:
    """Apply the migrations ``db`` has not seen yet, each in its own transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise EdgecapError(
            f"The task database {path} was written by a newer edgecap (schema {version}, this "
            f"version knows {len(migrations)}). Upgrade edgecap, or point EDGECAP_HOME elsewhere.",
            code="invalidParameter",
        )
    for number, script in enumerate(migrations[version:], start=version + 1):
        try:
            db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _expired(task_uuid: str) -> TaskExpired:
    return TaskExpired(
        f"The result of task {task_uuid} has expired and was deleted. Results are kept for "
        "`ttl` seconds after a task finishes (server default: result_ttl_s); send the task "
        "again under a new taskUUID, with a larger ttl if you need it longer.",
        parameter="taskUUID",
    )


# ---------------------------------------------------------------------- rows <-> records


def _image_key(image: LoadedImage) -> str:
    """The same source resized to the same size gives the same pixels: store them once."""
    return f"{image.sha256}-{image.width}x{image.height}"


def _encode_job(job: CaptionJob) -> str:
    request = job.request
    image = request.image
    return json.dumps(
        {
            "model": job.model,
            "include_cost": job.include_cost,
            "webhook_url": job.webhook_url,
            "upload_endpoint": job.upload_endpoint,
            "ttl_s": job.ttl_s,
            "prompt": request.prompt,
            "system_prompt": request.system_prompt,
            "sampling": asdict(request.sampling),
            "json_schema": request.json_schema,
            "image": {k: v for k, v in asdict(image).items() if k != "rgb"} if image else None,
        }
    )


def _decode_job(row: sqlite3.Row) -> CaptionJob:
    data = json.loads(row["job"])
    image_meta = data["image"]
    image = LoadedImage(rgb=row["rgb"], **image_meta) if image_meta else None
    request = CaptionRequest(
        image=image,
        prompt=data["prompt"],
        system_prompt=data["system_prompt"],
        sampling=Sampling(**data["sampling"]),
        json_schema=data["json_schema"],
    )
    return CaptionJob(
        task_uuid=row["task_uuid"],
        request=request,
        model=data["model"],
        include_cost=data["include_cost"],
        webhook_url=data["webhook_url"],
        upload_endpoint=data["upload_endpoint"],
        ttl_s=data["ttl_s"],
        fingerprint=row["fingerprint"],
        original_task=json.loads(row["original_task"]),
        owner=row["owner"],
    )


RECORD_COLUMNS = (
    "task_uuid",
    "status",
    "result",
    "error",
    "original_task",
    "response",
    "expires_at",
    "owner",
)


def _record(row: sqlite3.Row) -> TaskRecord:
    keys = row.keys()
    return TaskRecord(
        task_uuid=row["task_uuid"],
        status=row["status"],
        result=_loads(row["result"]),
        error=_loads(row["error"]),
        original_task=json.loads(row["original_task"]) if "original_task" in keys else {},
        response=_loads(row["response"]),
        expires_at=row["expires_at"],
        owner=row["owner"],
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        task_uuid=row["task_uuid"],
        attempts=row["attempts"],
        outgoing=Outgoing(
            kind=row["kind"], url=row["url"], body=row["body"], content_type=row["content_type"]
        ),
    )


def _dumps(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
