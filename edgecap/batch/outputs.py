"""Durable files: the append-only JSONL file (results and journal) and atomic sidecars.

Each write is fsynced before it returns, so a result is on disk before its image is journaled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from edgecap.errors import EdgecapError
from edgecap.fsutil import write_text_atomic

JOURNAL_NAME = "batch-journal.jsonl"  # under the edgecap home unless a run names its own
TAIL_CHUNK = 64 * 1024


class LineFile:
    """An append-only JSONL file; every line is fsynced before ``append`` returns.

    A process killed mid-write leaves a torn last line: it is cut off when the file is opened
    (it was never journaled, so its image is captioned again).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = []
        for raw in self.path.read_bytes().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # a torn line
        return [line for line in lines if isinstance(line, dict)]

    def append(self, record: dict[str, Any]) -> None:
        file = self._file or self._open()
        file.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        file.flush()
        os.fsync(file.fileno())

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


def write_sidecar(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:mod:`edgecap.fsutil`); an error says the fix."""
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise EdgecapError(
            f"Could not write the sidecar {path} ({exc.strerror or exc}): check the folder's "
            "permissions and the free disk space."
        ) from exc
