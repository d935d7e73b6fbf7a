"""Durable files: append-only JSONL files (results, journal) and atomic whole-file writes.

Each write is fsynced before it returns, so a result is on disk before its image is journaled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from edgecap.errors import EdgecapError
from edgecap.fsutil import write_bytes_atomic

TAIL_CHUNK = 64 * 1024


class LineFile:
    """An append-only JSONL file; every line is fsynced before ``append`` returns.

    A process killed mid-write leaves a torn last line: it is cut off when the file is opened
    (it was never journaled, so its image is captioned again).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def records(self) -> Iterator[dict[str, Any]]:
        """The JSON objects of the file as it is now, one line at a time; a torn line or any
        other line that is not a JSON object is passed over."""
        if not self.path.is_file():
            return
        with self.path.open("rb") as file:
            for raw in file:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # a torn line
                if isinstance(record, dict):
                    yield record

    def append(self, record: dict[str, Any]) -> None:
        file = self._file or self._open()
        file.write(encode_line(record))
        file.flush()
        os.fsync(file.fileno())

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the file's content with ``records``, atomically (temporary file, rename)."""
        self.close()
        write_atomic(self.path, b"".join(encode_line(r) for r in records))

    def _open(self) -> IO[bytes]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = self.path.open("ab+")
            _cut_torn_line(file)
        except OSError as exc:
            raise EdgecapError(
                f"Could not open {self.path} for writing ({exc.strerror or exc}): check the "
                "path, its permissions and the free disk space."
            ) from exc
        self._file = file
        return file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _cut_torn_line(file: IO[bytes]) -> None:
    """Truncate the file after its last newline, if it does not end with one."""
    end = pos = file.seek(0, os.SEEK_END)
    while pos > 0:
        step = min(TAIL_CHUNK, pos)
        file.seek(pos - step)
        chunk = file.read(step)
        if pos == end and chunk.endswith(b"\n"):
            return
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            file.truncate(pos - step + newline + 1)
            break
        pos -= step
    else:
        file.truncate(0)
    file.seek(0, os.SEEK_END)


def encode_line(record: dict[str, Any]) -> bytes:
    """One JSONL line, UTF-8. Text that UTF-8 cannot hold (a file name that is not UTF-8,
    decoded with surrogate escapes) is written as JSON escapes, which read back the same."""
    try:
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(record).encode("ascii") + b"\n"


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` atomically (:mod:`edgecap.fsutil`); an
    error says the fix."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        raise EdgecapError(
            f"Could not write {path} ({exc.strerror or exc}): check the folder's "
            "permissions and the free disk space."
        ) from exc
