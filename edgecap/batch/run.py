"""The run: caption images with one engine, prefetching the next, storing each result.

With a batching engine (one with ``stream_many``) two images are in flight: the next image's
encode and prefill run between the decode steps of the current one, and their tokens share
a batch. Outcomes are reported as images finish.

What a resumed run skips is decided by :class:`edgecap.batch.journal.Ledger`: an image whose
result for this same job is still in every destination of the run.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgecap.batch.journal import Ledger, image_key, job_identity
from edgecap.batch.options import CaptionOptions, RunOptions
from edgecap.batch.outcomes import AlreadyDone, Captioned, Failed, Outcome, Skipped, Summary
from edgecap.batch.sources import ImageItem
from edgecap.config import Settings
from edgecap.errors import EdgecapError, InvalidParameter
from edgecap.inputs.images import load_image
from edgecap.protocol import result_item
from edgecap.records import CaptionRequest, CaptionResult, LoadedImage, TokenPiece
from edgecap.registry.digests import sha256_file

IN_FLIGHT = 2  # images captioned at once by a batching engine


class StreamingEngine(Protocol):
    """The part of :class:`edgecap.engine.engine.Engine` a run uses."""

    model_id: str

    def stream(self, request: CaptionRequest) -> Iterator[TokenPiece | CaptionResult]: ...


OnOutcome = Callable[[Outcome], None]
OnPiece = Callable[[ImageItem, str], None]


def caption_many(
    items: Sequence[ImageItem],
    engine: StreamingEngine,
    settings: Settings,
    options: CaptionOptions,
    run: RunOptions | None = None,
    *,
    on_outcome: OnOutcome | None = None,
    on_piece: OnPiece | None = None,
    in_flight: int = IN_FLIGHT,
) -> Summary:
    """Caption ``items`` in order with ``engine``; report each outcome; return the counts.

    ``on_piece`` receives generated text as it streams; ``on_outcome`` every image's outcome,
    after its results are durably written. Per-image problems (:class:`EdgecapError` while
    loading or captioning) become :class:`Failed` outcomes; an error writing the outputs ends
    the run.
    """
    batch = _Batch(engine, settings, options, run or RunOptions(), items)
    summary = Summary()

    def report(outcome: Outcome) -> None:
        summary.add(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    stream_many = getattr(engine, "stream_many", None)
    try:
        if stream_many is None or in_flight < 2:
            with closing(_one_ahead(items, batch.prepare)) as prepared_items:
                for prepared in prepared_items:
                    report(batch.caption(prepared, on_piece))
        else:
            with closing(_futures_ahead(items, batch.prepare)) as futures:
                batch.caption_together(stream_many, futures, in_flight, on_piece, report)
    finally:
        batch.close()
    summary.redone = batch.redone
    return summary


def _one_ahead(
    items: Sequence[ImageItem], prepare: Callable[[ImageItem], _Prepared]
) -> Generator[_Prepared, None, None]:
    """``prepare(item)`` for every item in order; the next one runs in a thread meanwhile."""
    with closing(_futures_ahead(items, prepare)) as futures:
        for future in futures:
            yield future.result()


def _futures_ahead(
    items: Sequence[ImageItem], prepare: Callable[[ImageItem], _Prepared]
) -> Generator[Future[_Prepared], None, None]:
    """Futures of ``prepare(item)`` in order; each next one starts when one is handed out."""
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecap-prefetch")
    try:
        upcoming = pool.submit(prepare, items[0])
        for following in items[1:]:
            current, upcoming = upcoming, pool.submit(prepare, following)
            yield current
        yield upcoming
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class _Prepared:
    """An image read and decoded ahead of its turn, or what happens to it instead."""

    image: ImageItem
    loaded: LoadedImage | None = None
    key: str = ""  # the journal key of this job's result for it
    outcome: Failed | AlreadyDone | Skipped | None = None


class _Batch:
    """The state of one run: the job's identity, the outputs and their journal."""

    def __init__(
        self,
        engine: StreamingEngine,
        settings: Settings,
        options: CaptionOptions,
        run: RunOptions,
        items: Sequence[ImageItem],
    ) -> None:
        self.engine, self.settings, self.options, self.run = engine, settings, options, run
        self.job = job_identity(engine.model_id, settings, options)
        self.sidecar_owner = sidecar_owners(items) if run.sidecars else {}
        self.ledger = Ledger(run, items)
        self.redone: Counter[str] = Counter()  # written by the prefetch thread only

    # -- ahead of time, in the prefetch thread ---------------------------------------------

    def prepare(self, image: ImageItem) -> _Prepared:
        """Decide whether ``image`` needs captioning and, if so, load it."""
        refused = refuse_sidecar(image, self.run, self.sidecar_owner)
        if refused is not None:
            return _Prepared(image, outcome=refused)
        key = self._key_before_decoding(image)
        if key is not None and self.ledger.is_done(key, image):
            return _Prepared(image, outcome=AlreadyDone(image))
        exists = existing_sidecar(image, self.run)
        if exists is not None:
            return _Prepared(image, outcome=exists)
        try:
            loaded = load_image(
                image.source,
                self.settings,
                min_pixels=self.options.min_pixels,
                max_pixels=self.options.max_pixels,
            )
        except EdgecapError as exc:
            return _Prepared(image, outcome=Failed(image, exc))
        key = image_key(self.job, image, loaded.sha256)
        if self.ledger.is_done(key, image):
            return _Prepared(image, outcome=AlreadyDone(image))
        why = self.ledger.why_redone(key)
        if why is not None:
            self.redone[why] += 1
        return _Prepared(image, loaded, key)

    def _key_before_decoding(self, image: ImageItem) -> str | None:
        # Hashing a file is much cheaper than decoding it: resuming a long run skips quickly.
        if not self.run.resume or image.path is None:
            return None
        try:
            return image_key(self.job, image, sha256_file(image.path))
        except OSError:
            return None  # load_image reports it

    # -- in turn, in the calling thread ----------------------------------------------------

    def caption(self, prepared: _Prepared, on_piece: OnPiece | None) -> Outcome:
        if prepared.outcome is not None:
            return prepared.outcome
        assert prepared.loaded is not None
        image = prepared.image
        result: CaptionResult | None = None
        try:
            for piece in self.engine.stream(self.options.request(prepared.loaded)):
                if isinstance(piece, CaptionResult):
                    result = piece
                elif on_piece is not None:
                    on_piece(image, piece.text)
        except EdgecapError as exc:
            return Failed(image, exc)
        return self.finish(prepared, result)

    def caption_together(
        self,
        stream_many: Callable[..., Iterator[tuple[_Prepared, object]]],
        futures: Iterator[Future[_Prepared]],
        in_flight: int,
        on_piece: OnPiece | None,
        report: OnOutcome,
    ) -> None:
        """Caption with ``in_flight`` images decoded together; ``report`` every outcome.

        An image still loading is not waited for while others decode (None: not ready yet).
        """

        def requests() -> Iterator[tuple[_Prepared, CaptionRequest] | None]:
            for future in futures:
                while not future.done():
                    yield None
                prepared = future.result()
                if prepared.outcome is not None:
                    report(prepared.outcome)
                elif prepared.loaded is not None:
                    yield prepared, self.options.request(prepared.loaded)

        for prepared, item in stream_many(requests(), in_flight=in_flight):
            if isinstance(item, TokenPiece):
                if on_piece is not None:
                    on_piece(prepared.image, item.text)
            elif isinstance(item, EdgecapError):
                report(Failed(prepared.image, item))
            elif isinstance(item, CaptionResult):
                report(self.finish(prepared, item))

    def finish(self, prepared: _Prepared, result: CaptionResult | None) -> Outcome:
        """Store a caption's result durably; its outcome."""
        image = prepared.image
        assert prepared.loaded is not None
        if result is None:
            return Failed(image, EdgecapError("The engine stopped without a result."))
        captioned = Captioned(
            image,
            prepared.loaded.sha256,
            result,
            result_item(
                result,
                str(uuid.uuid4()),
                include_cost=self.run.include_cost,
                cost_per_second=self.settings.cost_per_second,
            ),
        )
        self.ledger.store(captioned, prepared.key)
        return captioned

    def close(self) -> None:
        self.ledger.close()


def sidecar_owners(items: Sequence[ImageItem]) -> dict[Path, ImageItem]:
    """Each sidecar path of ``items`` -> the first image writing it."""
    owners: dict[Path, ImageItem] = {}
    for item in items:
        if item.sidecar is not None:
            owners.setdefault(item.sidecar.resolve(), item)
    return owners


def refuse_sidecar(
    image: ImageItem, run: RunOptions, owners: dict[Path, ImageItem]
) -> Failed | None:
    """A failure if ``image`` needs a sidecar it cannot have (a URL, a name another owns)."""
    if not run.sidecars:
        return None
    sidecar = image.sidecar
    if sidecar is None:
        if run.jsonl is not None:
            return None  # its result goes to the JSONL file only
        return Failed(
            image,
            InvalidParameter(
                f"{image.name} is not a file, so it has no sidecar: write its result with "
                "--out FILE."
            ),
        )
    owner = owners.get(sidecar.resolve())
    if owner is not None and owner != image:
        return Failed(
            image,
            InvalidParameter(
                f"its sidecar {sidecar} is also the sidecar of {owner.name}: rename one "
                "of the two images."
            ),
        )
    return None


def existing_sidecar(image: ImageItem, run: RunOptions) -> Skipped | None:
    """Skipped if the run writes sidecars, this image has one, and ``--overwrite`` is off."""
    sidecar = image.sidecar
    if run.sidecars and not run.overwrite and sidecar is not None and sidecar.exists():
        return Skipped(image, f"{sidecar} exists (--overwrite redoes it)")
    return None
