"""The run: caption images in turn with one engine, prefetching the next, storing each result.

Also the journal's keys: an image is done for a resumed run when every destination of that run
(the JSONL file, the sidecar) has its result for the same image, model and request.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from edgecap.batch.options import CaptionOptions, RunOptions
from edgecap.batch.outcomes import Captioned, Failed, Outcome, Skipped, Summary
from edgecap.batch.outputs import JOURNAL_NAME, LineFile, write_sidecar
from edgecap.batch.sources import ImageItem
from edgecap.config import Settings
from edgecap.errors import EdgecapError, InvalidParameter
from edgecap.inputs.images import load_image, pixel_budget
from edgecap.protocol import result_item
from edgecap.records import CaptionRequest, CaptionResult, LoadedImage, TokenPiece
from edgecap.registry.digests import sha256_file

DONE_BEFORE = "done in an earlier run"


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
) -> Summary:
    """Caption ``items`` in order with ``engine``; report each outcome; return the counts.

    ``on_piece`` receives generated text as it streams; ``on_outcome`` every image's outcome,
    after its results are durably written. Per-image problems (:class:`EdgecapError` while
    loading or captioning) become :class:`Failed` outcomes; an error writing the outputs ends
    the run.
    """
    batch = _Batch(engine, settings, options, run or RunOptions(), items)
    summary = Summary()
    try:
        with closing(_one_ahead(items, batch.prepare)) as prepared_items:
            for prepared in prepared_items:
                outcome = batch.caption(prepared, on_piece)
                summary.add(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
    finally:
        batch.close()
    return summary


def _one_ahead(
    items: Sequence[ImageItem], prepare: Callable[[ImageItem], _Prepared]
) -> Generator[_Prepared, None, None]:
    """``prepare(item)`` for every item in order; the next one runs in a thread meanwhile."""
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecap-prefetch")
    try:
        upcoming = pool.submit(prepare, items[0])
        for following in items[1:]:
            current, upcoming = upcoming, pool.submit(prepare, following)
            yield current.result()
        yield upcoming.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class _Prepared:
    """An image read and decoded ahead of its turn, or what happens to it instead."""

    image: ImageItem
    loaded: LoadedImage | None = None
    keys: tuple[str, ...] = ()  # one per destination of its result
    outcome: Failed | Skipped | None = None


class _Batch:
    """The state of one run: the job's identity, the journal, the output files."""

    def __init__(
        self,
        engine: StreamingEngine,
        settings: Settings,
        options: CaptionOptions,
        run: RunOptions,
        items: Sequence[ImageItem],
    ) -> None:
        self.engine, self.settings, self.options, self.run = engine, settings, options, run
        self.job = self._job_identity()
        self.sidecar_owner = self._sidecar_owners(items) if run.sidecars else {}
        self.journal: LineFile | None = None
        self.done: set[str] = set()
        self.results: LineFile | None = None
        if run.writes_files:
            path = run.journal or settings.home / JOURNAL_NAME
            self.journal = LineFile(path)
            if run.resume:
                self.done = {key for line in self.journal.read() for key in line.get("keys", ())}
        if run.jsonl is not None:
            self.results = LineFile(run.jsonl)

    def _job_identity(self) -> str:
        low, high = pixel_budget(
            self.settings, min_pixels=self.options.min_pixels, max_pixels=self.options.max_pixels
        )
        job = {
            "model": self.engine.model_id,
            "prompt": self.options.prompt,
            "system": self.settings.system_prompt_for(self.options.system_prompt),
            "sampling": asdict(self.options.sampling),
            "json_schema": self.options.json_schema,
            "pixels": [low, high],
        }
        return json.dumps(job, sort_keys=True)

    @staticmethod
    def _sidecar_owners(items: Sequence[ImageItem]) -> dict[Path, ImageItem]:
        owners: dict[Path, ImageItem] = {}
        for item in items:
            if item.sidecar is not None:
                owners.setdefault(item.sidecar.resolve(), item)
        return owners

    def keys(self, image: ImageItem, sha256: str) -> tuple[str, ...]:
        """The journal keys of this job's result for an image: one per place it is written."""
        source = str(image.path.resolve()) if image.path is not None else image.name
        destinations = []
        if self.run.jsonl is not None:
            destinations.append(f"jsonl {self.run.jsonl.resolve()}")
        if self.run.sidecars and image.sidecar is not None:
            destinations.append(f"sidecar {image.sidecar.resolve()}")
        return tuple(
            hashlib.sha256(f"{self.job}\n{source}\n{sha256}\n{d}".encode()).hexdigest()
            for d in destinations
        )

    def is_done(self, keys: tuple[str, ...]) -> bool:
        return self.run.resume and bool(keys) and all(key in self.done for key in keys)

    # -- ahead of time, in the prefetch thread ---------------------------------------------

    def prepare(self, image: ImageItem) -> _Prepared:
        """Decide whether ``image`` needs captioning and, if so, load it."""
        early = self._skip_or_refuse(image)
        if early is not None:
            return _Prepared(image, outcome=early)
        if self._done_before_decoding(image):
            return _Prepared(image, outcome=Skipped(image, DONE_BEFORE))
        try:
            loaded = load_image(
                image.source,
                self.settings,
                min_pixels=self.options.min_pixels,
                max_pixels=self.options.max_pixels,
            )
        except EdgecapError as exc:
            return _Prepared(image, outcome=Failed(image, exc))
        keys = self.keys(image, loaded.sha256)
        if self.is_done(keys):
            return _Prepared(image, outcome=Skipped(image, DONE_BEFORE))
        return _Prepared(image, loaded, keys)

    def _done_before_decoding(self, image: ImageItem) -> bool:
        # Hashing a file is much cheaper than decoding it: resuming a long run skips quickly.
        if not self.run.resume or image.path is None:
            return False
        try:
            return self.is_done(self.keys(image, sha256_file(image.path)))
        except OSError:
            return False  # load_image reports it

    def _skip_or_refuse(self, image: ImageItem) -> Failed | Skipped | None:
        if not self.run.sidecars:
            return None
        sidecar = image.sidecar
        if sidecar is None:
            if self.run.jsonl is not None:
                return None  # its result goes to the JSONL file only
            return Failed(
                image,
                InvalidParameter(
                    f"{image.name} is not a file, so it has no sidecar: write its result with "
                    "--out FILE."
                ),
            )
        owner = self.sidecar_owner.get(sidecar.resolve())
        if owner is not None and owner != image:
            return Failed(
                image,
                InvalidParameter(
                    f"its sidecar {sidecar} is also the sidecar of {owner.name}: rename one "
                    "of the two images."
                ),
            )
        if sidecar.exists() and not self.run.overwrite:
            return Skipped(image, f"{sidecar} exists (--overwrite redoes it)")
        return None

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
        self._store(captioned, prepared.keys)
        return captioned

    def _store(self, captioned: Captioned, keys: tuple[str, ...]) -> None:
        """Write the outputs durably, then (and only then) journal the image as done."""
        if self.run.sidecars and captioned.image.sidecar is not None:
            write_sidecar(captioned.image.sidecar, captioned.result.text)
        if self.results is not None:
            self.results.append(captioned.record())
        if self.journal is not None:
            self.journal.append(
                {
                    "keys": list(keys),
                    "image": captioned.image.name,
                    "sha256": captioned.sha256,
                    "model": captioned.result.model,
                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )

    def close(self) -> None:
        for file in (self.results, self.journal):
            if file is not None:
                file.close()
