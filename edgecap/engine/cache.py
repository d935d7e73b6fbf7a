"""A bounded LRU of image embeddings, optionally persisted to disk across restarts.

Keys identify *what the encoder saw*: the image content hash, the budgeted size, and the
projector's fingerprint — never a path or URL. The same picture asked a new question skips
the vision encoder entirely.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecap.fsutil import write_bytes_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingKey:
    image_sha256: str
    width: int
    height: int
    mmproj: str  # projector fingerprint

    def filename(self) -> str:
        raw = f"{self.image_sha256}-{self.width}x{self.height}-{self.mmproj}"
        return hashlib.sha256(raw.encode()).hexdigest()[:40] + ".npy"


class EmbeddingCache:
    """LRU of float32 arrays ``[n_tokens, n_embd]``. ``max_entries == 0`` disables it."""

    def __init__(self, max_entries: int, directory: Path | None = None) -> None:
        self.max_entries = max_entries
        self.directory = directory
        self._items: OrderedDict[EmbeddingKey, np.ndarray] = OrderedDict()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: EmbeddingKey) -> np.ndarray | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        if self.directory is None or self.max_entries == 0:
            return None
        path = self.directory / key.filename()
        if not path.exists():
            return None
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # a torn or foreign file: drop it
            log.warning("discarding unreadable cached embedding %s: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        self._remember(key, value)
        return value

    def put(self, key: EmbeddingKey, value: np.ndarray) -> None:
        if self.max_entries == 0:
            return
        self._remember(key, value)
        if self.directory is not None:
            self._persist(key, value)

    def _remember(self, key: EmbeddingKey, value: np.ndarray) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def _persist(self, key: EmbeddingKey, value: np.ndarray) -> None:
        assert self.directory is not None
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        try:
            write_bytes_atomic(self.directory / key.filename(), buffer.getvalue())
        except OSError as exc:
            log.warning("could not persist image embedding: %s", exc)
        self._trim_directory()

    def _trim_directory(self) -> None:
        """Keep the on-disk cache to a few times the in-memory size, oldest out first."""
        assert self.directory is not None
        files = sorted(self.directory.glob("*.npy"), key=lambda p: p.stat().st_mtime)
        for stale in files[: max(0, len(files) - 4 * self.max_entries)]:
            stale.unlink(missing_ok=True)


def file_fingerprint(path: Path) -> str:
    """A cheap identity for a multi-GB model file: size plus hashes of its head and tail."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]
