"""Streaming sha256 and verified copies of model files.

Model files are gigabytes: they are hashed in chunks with a progress bar, and a copy is hashed
while it is written, so a file is read once. Nothing is written in place: a file goes to a
temporary name in the destination directory and is renamed only once it is complete and
checked (:mod:`edgecap.fsutil`), so a reader never sees half a file or a file that failed its
check.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from edgecap.errors import ModelError
from edgecap.fsutil import flush_to_disk

CHUNK_BYTES = 8 * 1024 * 1024


@contextmanager
def _progress_bar(label: str, total: int, enabled: bool) -> Iterator[tqdm]:
    with tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        leave=False,
    ) as bar:
        yield bar


def sha256_file(path: Path, *, progress: bool = False) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f, _progress_bar(f"sha256 {path.name}", _size(path), progress) as bar:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def copy_hashed(src: Path, dest: Path, *, progress: bool = False) -> str:
    """Copy ``src`` to ``dest`` (overwriting), flushed to disk; returns the sha256 of the bytes."""
    digest = hashlib.sha256()
    with (
        src.open("rb") as fin,
        dest.open("wb") as fout,
        _progress_bar(f"copy {src.name}", _size(src), progress) as bar,
    ):
        while chunk := fin.read(CHUNK_BYTES):
            digest.update(chunk)
            fout.write(chunk)
            bar.update(len(chunk))
        flush_to_disk(fout)
    return digest.hexdigest()


def check_digest(path: Path, expected: str, actual: str, *, fix: str) -> None:
    if actual != expected:
        raise ModelError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is "
            f"corrupt or was altered, and was not installed: {fix}"
        )


def _size(path: Path) -> int:
    return path.stat().st_size
