"""The SQLite task store: round trips, migrations, claiming, expiry, tombstones, the outbox."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from edgecap.config import MAX_TTL_S
from edgecap.errors import EdgecapError, NotFound, TaskExpired
from edgecap.records import CaptionRequest
from edgecap.runtime.migrations import MIGRATIONS, migrate
from edgecap.runtime.tasks import TOMBSTONE_SECONDS, CaptionJob, Outgoing, TaskStore
from tests.support.tasks import FakeClock, make_image, make_job


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock):
    store = TaskStore(tmp_path / "tasks.sqlite3", clock=clock)
    yield store
    store.close()


def image_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM images").fetchone()[0])


def test_new_database_has_every_migration_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "home" / "tasks.sqlite3"
    TaskStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"tasks", "images", "tombstones", "outbox"} <= tables


def test_migrations_apply_only_what_is_new(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, path)
    later = (*MIGRATIONS, "ALTER TABLE tasks ADD COLUMN note TEXT;")
    migrate(db, path, later)  # the first script would fail if it ran twice
    columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    assert "note" in columns
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
    db.close()


def test_failed_migration_leaves_the_version_alone(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, path)
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, path, (*MIGRATIONS, "CREATE TABLE extra (x); SELECT * FROM missing;"))
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert "extra" not in {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(EdgecapError, match="newer edgecap"):
        TaskStore(path)


def test_job_round_trips_through_the_store(store: TaskStore) -> None:
    job = make_job()
    record = store.add(job)
    assert record.status == "queued"
    assert record.original_task == job.original_task
    assert record.result is None and record.expires_at is None

    claimed = store.claim_next()
    assert claimed is not None
    assert claimed.job == job  # every field, pixels included
    assert claimed.attempts == 1
    assert store.get(job.task_uuid).status == "processing"


def test_text_only_job_round_trips(store: TaskStore) -> None:
    job = make_job()
    job = CaptionJob(**{**job.__dict__, "request": CaptionRequest(image=None, prompt="Hi")})
    store.add(job)
    claimed = store.claim_next()
    assert claimed is not None and claimed.job == job


def test_tasks_are_claimed_in_order_and_a_released_task_keeps_its_place(
    store: TaskStore, clock: FakeClock
) -> None:
    first, second = make_job(prompt="one"), make_job(prompt="two")
    store.add(first)
    clock.now += 1
    store.add(second)
    claimed = store.claim_next()
    assert claimed is not None and claimed.job.task_uuid == first.task_uuid
    assert claimed.queued_seconds == 1.0
    store.release(first.task_uuid, refund_attempt=False)
    again = store.claim_next()
    assert again is not None and again.job.task_uuid == first.task_uuid
    assert again.attempts == 2
    store.release(first.task_uuid, refund_attempt=True)
    assert store.claim_next().attempts == 2  # type: ignore[union-attr]
    assert store.claim_next().job.task_uuid == second.task_uuid  # type: ignore[union-attr]
    assert store.claim_next() is None


def test_requeue_unfinished_returns_processing_tasks_to_the_queue(store: TaskStore) -> None:
    job = make_job()
    store.add(job)
    store.claim_next()
    assert store.requeue_unfinished() == 1
    assert store.get(job.task_uuid).status == "queued"
    assert store.count("queued") == 1


def test_finish_stores_the_outcome_and_frees_the_pixels(
    store: TaskStore, clock: FakeClock, tmp_path: Path
) -> None:
    shared = make_image(seed=7)
    a, b = make_job(shared, prompt="a"), make_job(shared, prompt="b")
    store.add(a)
    store.add(b)
    assert image_rows(tmp_path / "tasks.sqlite3") == 1  # same pixels stored once
    store.claim_next()
    item = {"taskType": "imageCaption", "taskUUID": a.task_uuid, "status": "success", "text": "x"}
    record = store.finish(
        a.task_uuid, result=item, error=None, response={"data": [item]}, ttl_s=300
    )
    assert record.status == "success"
    assert record.result == item and record.response == {"data": [item]}
    assert record.expires_at == clock.now + 300
    assert image_rows(tmp_path / "tasks.sqlite3") == 1  # b still needs them
    claimed_b = store.claim_next()
    assert claimed_b is not None and claimed_b.job.request.image == shared
    error = {"code": "inferenceError", "message": "boom", "taskUUID": b.task_uuid}
    record = store.finish(
        b.task_uuid, result=None, error=error, response={"errors": [error]}, ttl_s=300
    )
    assert record.status == "error" and record.error == error
    assert image_rows(tmp_path / "tasks.sqlite3") == 0


def test_unknown_uuid_is_not_found(store: TaskStore) -> None:
    with pytest.raises(NotFound) as caught:
        store.get(str(uuid.uuid4()))
    assert caught.value.code == "taskNotFound"
    assert not isinstance(caught.value, TaskExpired)


def test_result_expires_then_is_purged_to_a_tombstone(store: TaskStore, clock: FakeClock) -> None:
    job = make_job()
    store.add(job)
    store.claim_next()
    store.finish(job.task_uuid, result={}, error=None, response={"data": [{}]}, ttl_s=60)
    clock.now += 59
    assert store.get(job.task_uuid).status == "success"
    assert store.purge_expired() == 0

    clock.now += 1
    with pytest.raises(TaskExpired) as caught:  # expired, not purged yet
        store.get(job.task_uuid)
    assert caught.value.code == "taskExpired" and caught.value.status == 404

    assert store.purge_expired() == 1
    with pytest.raises(TaskExpired):
        store.get(job.task_uuid)
    assert store.fingerprint(job.task_uuid) == job.fingerprint
    assert store.counts()["expired"] == 1 and store.counts()["success"] == 0

    clock.now += TOMBSTONE_SECONDS + 1
    store.purge_expired()
    with pytest.raises(NotFound) as forgotten:
        store.get(job.task_uuid)
    assert forgotten.value.code == "taskNotFound"


def test_unfinished_tasks_never_expire(store: TaskStore, clock: FakeClock) -> None:
    job = make_job()
    store.add(job)
    clock.now += 10 * 365 * 24 * 3600
    assert store.purge_expired() == 0
    assert store.get(job.task_uuid).status == "queued"


def test_outbox_is_written_with_the_result_and_scheduled(
    store: TaskStore, clock: FakeClock
) -> None:
    job = make_job()
    store.add(job)
    store.claim_next()
    hook = Outgoing("webhook", "http://127.0.0.1:9/hook", b'{"data":[]}', "application/json")
    put = Outgoing("upload", "http://127.0.0.1:9/up", b"text", "text/plain; charset=utf-8")
    store.finish(
        job.task_uuid,
        result={},
        error=None,
        response={"data": [{}]},
        ttl_s=60,
        outgoing=[hook, put],
    )
    due = store.due_deliveries(10)
    assert [d.outgoing for d in due] == [hook, put]
    assert all(d.task_uuid == job.task_uuid and d.attempts == 0 for d in due)
    assert store.due_deliveries(10, exclude=[due[0].id]) == [due[1]]

    store.delivery_retry(due[0].id, attempts=1, delay_s=4, error="HTTP 500")
    store.delivery_done(due[1].id, attempts=1)
    assert store.due_deliveries(10) == []
    assert store.next_delivery_at() == clock.now + 4
    clock.now += 4
    [again] = store.due_deliveries(10)
    assert again.id == due[0].id and again.attempts == 1
    store.delivery_failed(again.id, attempts=2, error="HTTP 500")
    assert store.delivery_counts() == {"pending": 0, "delivered": 1, "failed": 1}
    assert store.next_delivery_at() is None


def test_store_survives_reopening(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "tasks.sqlite3"
    job = make_job()
    first = TaskStore(path, clock=clock)
    first.add(job)
    first.close()
    second = TaskStore(path, clock=clock)
    claimed = second.claim_next()
    second.close()
    assert claimed is not None and claimed.job == job


def test_a_huge_ttl_is_clamped_instead_of_overflowing(store: TaskStore, clock: FakeClock) -> None:
    job = make_job(ttl_s=10**400)
    store.add(job)
    store.claim_next()
    record = store.finish(
        job.task_uuid, result={}, error=None, response={"data": [{}]}, ttl_s=10**400
    )
    assert record.status == "success"
    assert record.expires_at == clock.now + MAX_TTL_S
