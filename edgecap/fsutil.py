"""Atomic file writes: the one way edgecap puts a file where a reader may look for it.

A file is written to :func:`partial_path` (a hidden name beside the final one, in the same
directory, so the rename cannot cross file systems), flushed to disk, then renamed over the
final name, and the directory is synced so the rename itself survives a power cut. A reader
sees the old file or the whole new one, never half of one. Used for model records and packs,
sidecar captions, uploaded images, cached embeddings and the tools' outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

PARTIAL_SUFFIX = ".partial"


def partial_path(final: Path) -> Path:
    """Where ``final`` is written until it is complete: ``.<name>.partial`` beside it."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


def flush_to_disk(f: IO[Any]) -> None:
    """Flush ``f``'s buffers and fsync it: its bytes are on disk before a rename says so."""
    f.flush()
    os.fsync(f.fileno())


def sync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(partial: Path, final: Path) -> None:
    """Rename a complete, flushed ``partial`` over ``final`` and sync the directory."""
    os.replace(partial, final)
    sync_dir(final.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring). On an ``OSError`` the
    partial file is removed and the error raised; ``path`` is untouched."""
    tmp = partial_path(path)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            flush_to_disk(f)
        publish(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_bytes_atomic` of ``text`` as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """:func:`write_bytes_atomic` of ``data`` as indented JSON with a final newline."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
