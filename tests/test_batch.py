"""edgecap.batch: finding images, captioning many with a fake engine, durable outputs, resume."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from edgecap.batch import (
    JOURNAL_NAME,
    Captioned,
    CaptionOptions,
    Failed,
    ImageItem,
    Outcome,
    RunOptions,
    Skipped,
    caption_many,
    find_images,
)
from edgecap.config import Settings, load_settings
from edgecap.errors import ContextOverflow, EdgecapError, InvalidParameter, MissingInputImage
from edgecap.protocol import result_item
from edgecap.records import CaptionRequest, CaptionResult, Sampling, TokenPiece

FAKE_TIMINGS = {"load_image": 0.5, "encode": 1.0, "prefill": 0.25, "generate": 0.25}  # 2 s


class FakeEngine:
    """The engine interface with scripted output: ``a WxH image``, streamed word by word.

    Records every request. ``fail`` may return an error to raise for a request.
    """

    def __init__(
        self,
        model_id: str = "fake-model",
        fail: Callable[[CaptionRequest], EdgecapError | None] | None = None,
        before_stream: Callable[[CaptionRequest], None] | None = None,
    ) -> None:
        self.model_id = model_id
        self.requests: list[CaptionRequest] = []
        self.counters = {"image_encodes": 0, "image_cache_hits": 0, "prefix_cache_hits": 0}
        self.closed = False
        self._fail = fail
        self._before_stream = before_stream

    def stream(self, request: CaptionRequest) -> Iterator[TokenPiece | CaptionResult]:
        self.requests.append(request)
        if self._before_stream is not None:
            self._before_stream(request)
        error = self._fail(request) if self._fail is not None else None
        if error is not None:
            raise error
        image = request.image
        assert image is not None
        self.counters["image_encodes"] += 1
        text = f"a {image.width}x{image.height} image"
        words = text.split(" ")
        for i, word in enumerate(words):
            yield TokenPiece(word if i == 0 else f" {word}")
        yield CaptionResult(
            text=text,
            finish_reason="stop",
            prompt_tokens=20 + image.tokens,
            image_tokens=image.tokens,
            generated_tokens=len(words),
            timings=dict(FAKE_TIMINGS),
            model=self.model_id,
        )

    def caption(self, request: CaptionRequest) -> CaptionResult:
        for item in self.stream(request):
            if isinstance(item, CaptionResult):
                return item
        raise AssertionError("no result")

    def close(self) -> None:
        self.closed = True


def write_png(path: Path, size: tuple[int, int] = (56, 56), color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


def png_bytes(size: tuple[int, int], color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def settings(edgecap_home: Path) -> Settings:
    return load_settings()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """photos/a.png (56x56), photos/b.png (84x56), photos/sub/c.png (56x84), plus noise."""
    root = tmp_path / "photos"
    write_png(root / "a.png", (56, 56), "red")
    write_png(root / "b.png", (84, 56), "green")
    write_png(root / "sub" / "c.png", (56, 84), "blue")
    (root / "notes.txt").write_text("not an image")
    write_png(root / ".hidden.png")
    write_png(root / ".cache" / "d.png")
    return root


OPTIONS = CaptionOptions(prompt="Describe.", sampling=Sampling(max_tokens=16))


def run_batch(
    items: list[ImageItem],
    settings: Settings,
    run: RunOptions | None = None,
    engine: FakeEngine | None = None,
    options: CaptionOptions = OPTIONS,
) -> tuple[FakeEngine, list[Outcome], str]:
    engine = engine or FakeEngine()
    outcomes: list[Outcome] = []
    summary = caption_many(items, engine, settings, options, run, on_outcome=outcomes.append)
    return engine, outcomes, summary.line()


# ---------------------------------------------------------------------------- find_images


def test_find_images_walks_folders_sorted_skipping_hidden_and_non_images(folder: Path) -> None:
    assert find_images([str(folder)]) == [
        ImageItem(folder / "a.png"),
        ImageItem(folder / "b.png"),
        ImageItem(folder / "sub" / "c.png"),
    ]


def test_find_images_keeps_order_and_each_image_once(folder: Path) -> None:
    notes = folder / "notes.txt"
    items = find_images([str(folder / "b.png"), str(folder), str(notes), "-"])
    assert [i.name for i in items] == [
        str(folder / "b.png"),
        str(folder / "a.png"),
        str(folder / "sub" / "c.png"),
        str(notes),  # named explicitly: captioned (and reported) whatever its suffix
        "-",
    ]


def test_find_images_expands_globs_and_passes_urls_through(folder: Path) -> None:
    items = find_images([f"{folder}/**/*.png", "https://example.com/x.jpg"])
    assert [i.name for i in items] == [
        str(folder / "a.png"),
        str(folder / "b.png"),
        str(folder / "sub" / "c.png"),
        "https://example.com/x.jpg",
    ]
    assert items[-1].path is None and items[-1].sidecar is None
    assert items[0].sidecar == folder / "a.txt"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.jpg", "No such file or directory: '{root}/missing.jpg'. Check the path."),
        (
            "empty",
            "No images under '{root}/empty' (looked for avif, bmp, gif, heic, heif, "
            "jfif, jpeg, jpg, png, tif, tiff, webp files, recursively).",
        ),
        (
            "*.gif",
            "No images match '{root}/*.gif' (looked for avif, bmp, gif, heic, heif, "
            "jfif, jpeg, jpg, png, tif, tiff, webp files).",
        ),
    ],
)
def test_find_images_refuses_typos_before_any_work(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidParameter) as caught:
        find_images([f"{tmp_path}/{spec}"])
    assert caught.value.message == message.format(root=tmp_path)


def test_find_images_needs_at_least_one() -> None:
    with pytest.raises(MissingInputImage):
        find_images([])


# ---------------------------------------------------------------------------- caption_many


def test_results_go_to_jsonl_and_sidecars_then_the_journal(
    folder: Path, settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    items = find_images([str(folder)])
    engine, outcomes, line = run_batch(items, settings, RunOptions(jsonl=out, sidecars=True))

    assert line == "3 captioned, 0 failed, 0 skipped"
    assert [r.image.width for r in engine.requests if r.image] == [56, 84, 56]
    assert {r.prompt for r in engine.requests} == {"Describe."}
    assert (folder / "a.txt").read_text() == "a 56x56 image"
    assert (folder / "sub" / "c.txt").read_text() == "a 56x84 image"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["image"], x["text"]) for x in lines] == [
        (str(folder / "a.png"), "a 56x56 image"),
        (str(folder / "b.png"), "a 84x56 image"),
        (str(folder / "sub" / "c.png"), "a 56x84 image"),
    ]
    assert all(list(x) == ["image", "taskType", "taskUUID", "status", "text"] for x in lines)
    journal = [json.loads(x) for x in (settings.home / JOURNAL_NAME).read_text().splitlines()]
    assert [j["image"] for j in journal] == [x["image"] for x in lines]
    assert all(isinstance(o, Captioned) for o in outcomes)


def test_result_item_is_the_api_item() -> None:
    result = CaptionResult("hi", "stop", 1, 0, 1, dict(FAKE_TIMINGS), "m")
    task = str(uuid.uuid4())
    assert result_item(result, task, include_cost=False, cost_per_second=0.5) == {
        "taskType": "imageCaption",
        "taskUUID": task,
        "status": "success",
        "text": "hi",
    }
    with_cost = result_item(result, task, include_cost=True, cost_per_second=0.0002)
    assert with_cost["cost"] == 0.0004  # 2 compute seconds x the rate


def test_a_bad_file_is_reported_and_the_run_goes_on(folder: Path, settings: Settings) -> None:
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    items = find_images([str(folder)])
    engine, outcomes, line = run_batch(items, settings)

    assert line == "3 captioned, 1 failed, 0 skipped"
    failed = [o for o in outcomes if isinstance(o, Failed)]
    assert [f.image.name for f in failed] == [str(folder / "broken.jpg")]
    assert failed[0].error.code == "invalidInputImage"
    assert len(engine.requests) == 3


def test_an_engine_error_fails_that_image_only(folder: Path, settings: Settings) -> None:
    def too_wide(request: CaptionRequest) -> EdgecapError | None:
        assert request.image is not None
        return ContextOverflow("too big; lower maxPixels") if request.image.width > 56 else None

    items = find_images([str(folder)])
    _, outcomes, line = run_batch(items, settings, engine=FakeEngine(fail=too_wide))
    assert line == "2 captioned, 1 failed, 0 skipped"
    assert [type(o).__name__ for o in outcomes] == ["Captioned", "Failed", "Captioned"]


def test_existing_sidecars_are_skipped_unless_overwrite(folder: Path, settings: Settings) -> None:
    (folder / "b.txt").write_text("hand-written caption")
    items = find_images([str(folder)])
    _, outcomes, line = run_batch(items, settings, RunOptions(sidecars=True))
    assert line == "2 captioned, 0 failed, 1 skipped"
    assert (folder / "b.txt").read_text() == "hand-written caption"
    skipped = next(o for o in outcomes if isinstance(o, Skipped))
    assert skipped.reason == f"{folder / 'b.txt'} exists (--overwrite redoes it)"

    _, _, line = run_batch(items, settings, RunOptions(sidecars=True, overwrite=True))
    assert line == "3 captioned, 0 failed, 0 skipped"
    assert (folder / "b.txt").read_text() == "a 84x56 image"


def test_two_images_sharing_a_sidecar_name(tmp_path: Path, settings: Settings) -> None:
    write_png(tmp_path / "x.png")
    write_png(tmp_path / "x.jpg.png")  # a different sidecar: x.jpg.txt
    Image.new("RGB", (56, 56)).save(tmp_path / "x.jpg", format="JPEG")
    items = find_images([str(tmp_path)])
    _, outcomes, line = run_batch(items, settings, RunOptions(sidecars=True))
    assert line == "2 captioned, 1 failed, 0 skipped"
    failed = next(o for o in outcomes if isinstance(o, Failed))
    assert failed.image.name == str(tmp_path / "x.png")
    assert failed.error.message == (
        f"its sidecar {tmp_path / 'x.txt'} is also the sidecar of {tmp_path / 'x.jpg'}: "
        "rename one of the two images."
    )


def test_resume_needs_files_to_resume_from() -> None:
    with pytest.raises(InvalidParameter, match=r"^--resume needs results written to files"):
        RunOptions(resume=True)


def test_resume_skips_what_was_done_for_the_same_job_only(
    folder: Path, settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    items = find_images([str(folder)])
    run_batch(items, settings, RunOptions(jsonl=out))

    engine, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True))
    assert (line, len(engine.requests)) == ("0 captioned, 0 failed, 3 skipped", 0)

    # A changed file, prompt, budget or model is a new job for that image.
    write_png(folder / "a.png", (56, 56), "yellow")
    engine, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True))
    assert line == "1 captioned, 0 failed, 2 skipped"
    other = CaptionOptions(prompt="Other.", sampling=OPTIONS.sampling)
    _, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True), options=other)
    assert line == "3 captioned, 0 failed, 0 skipped"
    engine = FakeEngine(model_id="another-model")
    _, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True), engine=engine)
    assert line == "3 captioned, 0 failed, 0 skipped"
    # ... as is another destination.
    _, _, line = run_batch(items, settings, RunOptions(jsonl=tmp_path / "b.jsonl", resume=True))
    assert line == "3 captioned, 0 failed, 0 skipped"
    assert len(out.read_text().splitlines()) == 3 + 1 + 3 + 3


def test_a_torn_last_line_is_cut_and_ignored(
    folder: Path, settings: Settings, tmp_path: Path
) -> None:
    out, journal = tmp_path / "results.jsonl", tmp_path / "journal.jsonl"
    items = find_images([str(folder)])
    run_batch(items[:1], settings, RunOptions(jsonl=out, journal=journal))
    for path in (out, journal):
        with path.open("ab") as f:
            f.write(b'{"image": "half a li')  # a process killed mid-write

    _, _, line = run_batch(items, settings, RunOptions(jsonl=out, journal=journal, resume=True))
    assert line == "2 captioned, 0 failed, 1 skipped"
    for path in (out, journal):
        lines = [json.loads(x) for x in path.read_text().splitlines()]  # all parse
        assert [x["image"] for x in lines] == [i.name for i in items]


def test_nothing_is_journaled_when_the_output_cannot_be_written(
    folder: Path, settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    out.mkdir()  # a folder where the results file should be
    items = find_images([str(folder)])
    with pytest.raises(EdgecapError, match=r"^Could not open .*results.jsonl for writing"):
        run_batch(items, settings, RunOptions(jsonl=out))
    assert not (settings.home / JOURNAL_NAME).exists()


def test_a_non_file_has_no_sidecar(settings: Settings) -> None:
    items = [ImageItem("https://example.com/x.png")]
    _, outcomes, line = run_batch(items, settings, RunOptions(sidecars=True))
    assert line == "0 captioned, 1 failed, 0 skipped"
    assert isinstance(outcomes[0], Failed)
    assert outcomes[0].error.message == (
        "https://example.com/x.png is not a file, so it has no sidecar: write its result with "
        "--out FILE."
    )


def test_streaming_pieces_reach_on_piece(folder: Path, settings: Settings) -> None:
    pieces: list[tuple[str, str]] = []
    items = [ImageItem(folder / "a.png")]
    caption_many(
        items, FakeEngine(), settings, OPTIONS, on_piece=lambda i, t: pieces.append((i.name, t))
    )
    assert pieces == [(str(folder / "a.png"), t) for t in ("a", " 56x56", " image")]


def test_the_budget_and_request_fields_reach_the_engine(folder: Path, settings: Settings) -> None:
    options = CaptionOptions(
        prompt="JSON please.",
        system_prompt="Be terse.",
        sampling=Sampling(temperature=0.7, seed=3, max_tokens=5),
        json_schema={"type": "object"},
        max_pixels=28 * 28,
    )
    engine, _, _ = run_batch([ImageItem(folder / "b.png")], settings, options=options)
    request = engine.requests[0]
    assert request.image is not None
    assert (request.image.width, request.image.height) == (28, 28)
    assert (request.prompt, request.system_prompt) == ("JSON please.", "Be terse.")
    assert request.sampling == Sampling(temperature=0.7, seed=3, max_tokens=5)
    assert request.json_schema == {"type": "object"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_the_next_image_loads_while_the_engine_generates(
    tmp_path: Path, settings: Settings
) -> None:
    # The second image is a named pipe: reading it blocks until someone writes. The engine
    # writes it while captioning the first image, which succeeds only if another thread is
    # already reading the pipe (opening a pipe for writing without a reader fails).
    first, second = write_png(tmp_path / "first.png"), tmp_path / "second.png"
    os.mkfifo(second)
    fed = threading.Event()

    def feed_second(request: CaptionRequest) -> None:
        if fed.is_set():
            return
        deadline = time.monotonic() + 30  # a guard against hanging, not a measurement
        while True:
            try:
                fd = os.open(second, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the second image was not being read during the first caption")
                time.sleep(0.01)
        os.set_blocking(fd, True)
        os.write(fd, png_bytes((84, 84), "white"))
        os.close(fd)
        fed.set()

    engine = FakeEngine(before_stream=feed_second)
    _, outcomes, line = run_batch([ImageItem(first), ImageItem(second)], settings, engine=engine)
    assert line == "2 captioned, 0 failed, 0 skipped"
    assert [o.result.text for o in outcomes if isinstance(o, Captioned)] == [
        "a 56x56 image",
        "a 84x84 image",
    ]
