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
  journal, so a run killed at any moment loses no journaled result, and ``resume`` redoes at most
  the one image that was being written when it died (:mod:`edgecap.batch.outputs`).

The journal is an append-only JSONL file, one fsynced line per finished image. Its keys name
the image (content sha256 and source), what was asked (prompt, system prompt, sampling, JSON
schema, pixel budget), the model, and one destination each (the JSONL file, the sidecar): an
image is done for a resumed run when every destination of that run has its result.
"""

from edgecap.batch.options import CaptionOptions, RunOptions
from edgecap.batch.outcomes import Captioned, Failed, Outcome, Skipped, Summary
from edgecap.batch.outputs import JOURNAL_NAME
from edgecap.batch.run import OnOutcome, OnPiece, StreamingEngine, caption_many
from edgecap.batch.sources import IMAGE_SUFFIXES, SIDECAR_SUFFIX, ImageItem, find_images

__all__ = [
    "IMAGE_SUFFIXES",
    "JOURNAL_NAME",
    "SIDECAR_SUFFIX",
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
]
