"""Caption many images with one engine: find them, caption them in turn, store results durably.

The library behind ``edgecap caption`` on folders, for the server and the benchmark too:

- :func:`find_images` turns command-line specs (files, folders searched recursively, globs,
  URLs, ``-`` for stdin) into :class:`ImageItem` s;
- :func:`caption_many` captions them one after another; while the engine generates, a
  one-ahead prefetch thread reads and decodes the next image. A bad image becomes a
  :class:`Failed` outcome and the run goes on;
- results go to a JSONL file and/or ``.txt`` sidecars (``photo.jpg`` -> ``photo.txt``). Each is
  durably written (fsync; sidecars by atomic rename) *before* the image is recorded in the
  journal, so a run killed at any moment loses no journaled result, and ``resume`` redoes at most
  the one image that was being written when it died.

The journal is an append-only JSONL file, one fsynced line per finished image. Its keys name
the image (content sha256 and source), what was asked (prompt, system prompt, sampling, JSON
schema, pixel budget), the model, and one destination each (the JSONL file, the sidecar): an
image is done for a resumed run when every destination of that run has its result.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol

from edgecap.config import Settings
from edgecap.errors import EdgecapError, InvalidParameter, MissingInputImage
from edgecap.images import load_image, pixel_budget
from edgecap.records import CaptionRequest, CaptionResult, LoadedImage, Sampling, TokenPiece
from edgecap.registry.digests import sha256_file
from edgecap.results import result_item

# Files a folder search picks up (case-insensitive). A file named on the command line is
# captioned whatever its name; folders and globs also hold sidecars and other non-images.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | {".heic", ".heif", ".avif"}
)
SIDECAR_SUFFIX = ".txt"
JOURNAL_NAME = "batch-journal.jsonl"
URL_PATTERN = re.compile(r"^https?://", re.IGNORECASE)
GLOB_CHARS = re.compile(r"[*?[]")
TAIL_CHUNK = 64 * 1024
DONE_BEFORE = "done in an earlier run"


# ---------------------------------------------------------------------------- finding images


@dataclass(frozen=True)
class ImageItem:
    """One image of a run: a file, an http(s) URL, or ``"-"`` (stdin)."""

    source: str | Path

    @property
    def name(self) -> str:
        """How messages and results name the image: the path or URL as given."""
        return str(self.source)

    @property
    def path(self) -> Path | None:
        return self.source if isinstance(self.source, Path) else None

    @property
    def sidecar(self) -> Path | None:
        """``photo.jpg`` -> ``photo.txt`` next to it; None for URLs and stdin."""
        return self.path.with_suffix(SIDECAR_SUFFIX) if self.path is not None else None


def find_images(specs: Sequence[str]) -> list[ImageItem]:
    """The images that command-line specs name, in order, each once.

    A spec is ``-`` (stdin), an http(s) URL, a file, a folder (searched recursively for
    :data:`IMAGE_SUFFIXES`, hidden entries skipped, sorted) or a glob (``**`` recurses). Raises
    :class:`InvalidParameter` for a path that does not exist or a folder or glob with no image,
    so that a typo fails before a model is loaded.
    """
    items: list[ImageItem] = []
    seen: set[str] = set()
    for spec in specs:
        for item in _expand(spec):
            identity = str(item.path.resolve()) if item.path is not None else item.name
            if identity not in seen:
                seen.add(identity)
                items.append(item)
    if not items:
        raise MissingInputImage("No image given: name image files, folders, globs or URLs.")
    return items


def _expand(spec: str) -> list[ImageItem]:
    if spec == "-" or URL_PATTERN.match(spec):
        return [ImageItem(spec)]
    path = Path(spec).expanduser()
    if path.is_dir():
        found = _images_under(path)
        if not found:
            raise InvalidParameter(f"No images under '{spec}' ({_suffix_list()}, recursively).")
        return found
    if path.exists():
        return [ImageItem(path)]
    if GLOB_CHARS.search(spec):
        found = []
        for match in sorted(glob.glob(os.path.expanduser(spec), recursive=True)):
            if os.path.isdir(match):
                found += _images_under(Path(match))
            elif _is_image_name(Path(match)):
                found.append(ImageItem(Path(match)))
        if not found:
            raise InvalidParameter(f"No images match '{spec}' ({_suffix_list()}).")
        return found
    raise InvalidParameter(f"No such file or directory: '{spec}'. Check the path.")


def _images_under(folder: Path) -> list[ImageItem]:
    found: list[ImageItem] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            ImageItem(Path(root) / name)
            for name in sorted(files)
            if not name.startswith(".") and _is_image_name(Path(name))
        ]
    return found


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _suffix_list() -> str:
    return "looked for " + ", ".join(sorted(s[1:] for s in IMAGE_SUFFIXES)) + " files"


# ---------------------------------------------------------------------------- what to do


@dataclass(frozen=True)
class CaptionOptions:
    """What every image of a run is asked: the instruction, sampling, constraint, budget."""

    prompt: str
    system_prompt: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    json_schema: dict[str, Any] | None = None  # {} = any JSON object; None = free text
    min_pixels: int | None = None  # None: the settings' budget
    max_pixels: int | None = None

    def request(self, image: LoadedImage) -> CaptionRequest:
        return CaptionRequest(
            image=image,
            prompt=self.prompt,
            system_prompt=self.system_prompt,
            sampling=self.sampling,
            json_schema=self.json_schema,
        )


@dataclass(frozen=True)
class RunOptions:
    """Where a run writes results, what they carry, and how a rerun treats finished images."""

    jsonl: Path | None = None  # append one line per captioned image
    sidecars: bool = False  # write photo.txt next to photo.jpg
    overwrite: bool = False  # caption images whose sidecar exists (else skip them)
    resume: bool = False  # skip images the journal has for this same job
    journal: Path | None = None  # default: <home>/batch-journal.jsonl
    include_cost: bool = False  # put the API's ``cost`` in every result item

    def __post_init__(self) -> None:
        if self.resume and not self.writes_files:
            raise InvalidParameter(
                "--resume needs results written to files (--out FILE or --sidecar): "
                "results printed to the terminal cannot be resumed.",
                parameter="resume",
            )

    @property
    def writes_files(self) -> bool:
        return self.jsonl is not None or self.sidecars


# ---------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Captioned:
    image: ImageItem
    sha256: str  # of the image's encoded bytes
    result: CaptionResult
    api_item: dict[str, Any]  # exactly the API's result item

    def record(self) -> dict[str, Any]:
        """The JSONL line: the API's result item, with the image it describes first."""
        return {"image": self.image.name, **self.api_item}


@dataclass(frozen=True)
class Failed:
    image: ImageItem
    error: EdgecapError


@dataclass(frozen=True)
class Skipped:
    image: ImageItem
    reason: str


Outcome = Captioned | Failed | Skipped


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0

    def add(self, outcome: Outcome) -> None:
        if isinstance(outcome, Captioned):
            self.captioned += 1
        elif isinstance(outcome, Failed):
            self.failed += 1
        else:
            self.skipped += 1

    def line(self) -> str:
        return f"{self.captioned} captioned, {self.failed} failed, {self.skipped} skipped"

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1."""
        return 1 if self.failed else 0


# ---------------------------------------------------------------------------- the run


class StreamingEngine(Protocol):
    """The part of :class:`edgecap.engine.Engine` a run uses."""

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
        self.journal: _LineFile | None = None
        self.done: set[str] = set()
        self.results: _LineFile | None = None
        if run.writes_files:
            path = run.journal or settings.home / JOURNAL_NAME
            self.journal = _LineFile(path)
            if run.resume:
                self.done = {key for line in self.journal.read() for key in line.get("keys", ())}
        if run.jsonl is not None:
            self.results = _LineFile(run.jsonl)

    def _job_identity(self) -> str:
        low, high = pixel_budget(
            self.settings, min_pixels=self.options.min_pixels, max_pixels=self.options.max_pixels
        )
        job = {
            "model": self.engine.model_id,
            "prompt": self.options.prompt,
            "system": self.options.system_prompt or self.settings.system_prompt,
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
            _write_atomic(captioned.image.sidecar, captioned.result.text)
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


# ---------------------------------------------------------------------------- durable files


class _LineFile:
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


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it, fsynced."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise EdgecapError(
            f"Could not write the sidecar {path} ({exc.strerror or exc}): check the folder's "
            "permissions and the free disk space."
        ) from exc
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened so on Windows.
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
