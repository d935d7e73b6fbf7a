"""Caption many images with one engine: find them, caption them in turn, store results durably.

The library behind ``edgecap caption`` on folders, for the server and the benchmark too:

- :func:`find_images` turns command-line specs (files, folders searched recursively, globs,
  URLs, ``-`` for stdin) into :class:`ImageItem` s (:mod:`edgecap.batch.sources`);
- :func:`caption_many` captions them one after another; while the engine generates, a
  one-ahead prefetch thread reads and decodes the next image. A bad image becomes a
  :class:`Failed` outcome and the run goes on (:mod:`edgecap.batch.run`,
  :mod:`edgecap.batch.options`, :mod:`edgecap.batch.outcomes`);
- results go to a JSONL file and/or ``.txt`` sidecars (``photo.jpg`` -> ``photo.txt``). Each is
  durably written (fsync; sidecars by atomic rename) *before* the image is recorded in the
  journal beside the output (``run.jsonl.journal``) (:mod:`edgecap.batch.outputs`);
- ``resume`` trusts the outputs, not the journal: an image is done only if its line is still in
  the JSONL file and its sidecar still holds the journaled text, for the same image content,
  request and model (:mod:`edgecap.batch.journal`). A run killed at any moment, then resumed,
  loses nothing and writes no result twice.
"""

from edgecap.batch.journal import FOLDER_JOURNAL, JOURNAL_SUFFIX, journal_path, redo_summary
from edgecap.batch.options import CaptionOptions, RunOptions
from edgecap.batch.outcomes import AlreadyDone, Captioned, Failed, Outcome, Skipped, Summary
from edgecap.batch.run import OnOutcome, OnPiece, StreamingEngine, caption_many
from edgecap.batch.sources import IMAGE_SUFFIXES, SIDECAR_SUFFIX, ImageItem, find_images

__all__ = [
    "FOLDER_JOURNAL",
    "IMAGE_SUFFIXES",
    "JOURNAL_SUFFIX",
    "SIDECAR_SUFFIX",
    "AlreadyDone",
    "CaptionOptions",
    "Captioned",
    "Failed",
    "ImageItem",
    "OnOutcome",
    "OnPiece",
    "Outcome",
    "RunOptions",
    "Skipped",
    "StreamingEngine",
    "Summary",
    "caption_many",
    "find_images",
    "journal_path",
    "redo_summary",
]
