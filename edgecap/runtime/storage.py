"""A full disk, told apart from other store failures, and a little space kept for it.

SQLite reports a full disk as ``database or disk is full`` (SQLITE_FULL). To still record that
a task failed for that reason — a write that needs a few pages — the service keeps a small
*reserve* file under the home directory, created at start; when the disk is full it deletes
the reserve, writes the error, and the reserve is recreated at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

logger = logging.getLogger(__name__)

RESERVE_BYTES = 2 * 1024 * 1024
RESERVE_NAME = "disk-reserve.bin"


def is_disk_full(exc: BaseException) -> bool:
    """Whether a store error means the disk (or quota) is full."""
    if isinstance(exc, sqlite3.Error):
        return "full" in str(exc).lower()
    return isinstance(exc, OSError) and exc.errno in (28, 122)  # ENOSPC, EDQUOT


class Reserve:
    """A file of :data:`RESERVE_BYTES` that can be given back when the disk fills up."""

    def __init__(self, home: Path) -> None:
        self.path = home / RESERVE_NAME

    def ensure(self) -> None:
        """Create the reserve if it is missing (best effort: a full disk leaves it out)."""
        if self.path.exists():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("wb") as out:
                out.write(b"\0" * RESERVE_BYTES)
        except OSError as exc:
            logger.warning("Could not create the disk reserve %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                self.path.unlink()

    def release(self) -> bool:
        """Delete the reserve to make room; whether there was one."""
        try:
            self.path.unlink()
        except OSError:
            return False
        logger.warning("The disk is full: released the %d-byte reserve", RESERVE_BYTES)
        return True
