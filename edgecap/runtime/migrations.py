"""The task database's schema: the migrations, applied in order, and the code that applies them.

Schema changes are appended to :data:`MIGRATIONS`, never edited; ``PRAGMA user_version``
records how many have been applied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from edgecap.errors import EdgecapError

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
