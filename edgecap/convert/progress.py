"""Plumbing shared by the converter and the quantizer: progress bars on stderr, output files
that appear whole or not at all, and the ``main`` of their tools/ scripts (:func:`run_tool`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from edgecap.errors import ConversionError, EdgecapError
from edgecap.fsutil import partial_path, publish


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "B") -> tqdm:
    """A tqdm bar on stderr (byte counts scaled to kB/MB/GB); a silent one when disabled."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )


def refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    """Raise ConversionError if any of ``paths`` exists and ``force`` is off."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConversionError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --force (force=True) to replace, or choose another output.",
            parameter="outdir",
        )


@contextmanager
def staged_outputs(paths: Sequence[Path], force: bool) -> Iterator[list[Path]]:
    """Yield a partial path (:func:`edgecap.fsutil.partial_path`) for each of ``paths``; rename
    them all into place when the block succeeds, delete them when it fails or is interrupted
    (Ctrl-C included).

    Refuses (ConversionError) before anything is written if a target exists and not ``force``.
    """
    refuse_overwrite(paths, force)
    partials = [partial_path(p) for p in paths]
    try:
        yield partials
        for partial in partials:  # on disk before the rename, so a crash leaves no empty file
            with partial.open("rb") as f:
                os.fsync(f.fileno())
        for partial, final in zip(partials, paths, strict=True):
            publish(partial, final)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)


def run_tool(work: Callable[[], Sequence[Path]]) -> int:
    """A tool's ``main``: run ``work``, print the files it wrote; errors become a message and an
    exit code (2 bad input, 1 I/O, 130 interrupted), never a traceback."""
    try:
        written = work()
    except EdgecapError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no output file was written", file=sys.stderr)
        return 130
    for path in written:
        print(path)
    return 0
