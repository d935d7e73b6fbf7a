"""Manifest files: a JSONL, CSV or Parquet file listing the images of a run (paths or URLs).

For datasets on shared storage: a manifest names each image once, in order. A row's image is
its ``image``, ``path`` or ``url`` field (the first present); a JSONL line may also be a bare
JSON string, a CSV without any of those headers uses its first column. A relative path is
relative to the manifest's folder. Missing files are not refused here: each becomes that
image's error record when the run reaches it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecap.errors import DependencyError, InvalidParameter

MANIFEST_SUFFIXES = frozenset({".jsonl", ".csv", ".parquet"})
COLUMNS = ("image", "path", "url")
URL_PREFIXES = ("http://", "https://")


def read_manifest(path: Path) -> list[str | Path]:
    """The image sources a manifest lists, in order (URLs as text, files as paths)."""
    readers = {".jsonl": _jsonl, ".csv": _csv, ".parquet": _parquet}
    try:
        entries = list(readers[path.suffix.lower()](path))
    except OSError as exc:
        raise InvalidParameter(f"Cannot read the manifest {path}: {exc.strerror or exc}.") from exc
    if not entries:
        raise InvalidParameter(f"The manifest {path} lists no image.")
    return [_source(entry, path.parent) for entry in entries]


def _source(entry: str, folder: Path) -> str | Path:
    if entry.lower().startswith(URL_PREFIXES):
        return entry
    return Path(entry) if Path(entry).is_absolute() else folder / entry


def _pick(row: dict[str, Any], where: str) -> str:
    for column in COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value:
            return value
    raise InvalidParameter(f"{where} has no image: give it an 'image', 'path' or 'url' field.")


def _jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except ValueError:
                raise InvalidParameter(f"{where} is not JSON.") from None
            if isinstance(row, str) and row:
                yield row
            elif isinstance(row, dict):
                yield _pick(row, where)
            else:
                raise InvalidParameter(f"{where} must be a JSON object or a string.")


def _csv(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    if not rows:
        return
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(c) for c in COLUMNS if c in header), None)
    body = rows[1:] if column is not None else rows
    for number, row in enumerate(body, 2 if column is not None else 1):
        value = row[column or 0].strip() if len(row) > (column or 0) else ""
        if not value:
            raise InvalidParameter(f"{path} row {number} has no image.")
        yield value


def _parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DependencyError(
            "Reading a Parquet manifest needs pyarrow: pip install 'edgecap[ray]' (or pyarrow)."
        ) from None
    table = pq.read_table(path)
    column = next((c for c in COLUMNS if c in table.column_names), None)
    if column is None:
        raise InvalidParameter(
            f"{path} has no 'image', 'path' or 'url' column (it has: "
            f"{', '.join(table.column_names)})."
        )
    for number, value in enumerate(table.column(column).to_pylist(), 1):
        if not isinstance(value, str) or not value:
            raise InvalidParameter(f"{path} row {number} has no image.")
        yield value
