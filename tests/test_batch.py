"""edgecap.batch: finding images, captioning many with a fake engine, durable outputs, resume."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from pathlib import Path

import pytest
from PIL import Image

from edgecap.batch import (
    JOURNAL_SUFFIX,
    AlreadyDone,
    Captioned,
    CaptionOptions,
    Failed,
    ImageItem,
    Outcome,
    RunOptions,
    Skipped,
    Summary,
    caption_many,
    find_images,
)
from edgecap.config import Settings, load_settings
from edgecap.errors import ContextOverflow, EdgecapError, InvalidParameter, MissingInputImage
from edgecap.protocol import result_item
from edgecap.records import CaptionRequest, CaptionResult, Sampling
from tests.support.engines import FAKE_TIMINGS, FakeEngine
from tests.support.images import png_bytes, write_png
from tests.support.waiting import wait_until


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

    assert line == "3 captioned, 0 failed, 0 already in the output, 0 skipped"
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
    journal_file = tmp_path / f"results.jsonl{JOURNAL_SUFFIX}"
    journal = [json.loads(x) for x in journal_file.read_text().splitlines()]
    assert [j["image"] for j in journal] == [x["image"] for x in lines]
    assert [j["task"] for j in journal] == [x["taskUUID"] for x in lines]
    assert not list(settings.home.iterdir())  # no global journal
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

    assert line == "3 captioned, 1 failed, 0 already in the output, 0 skipped"
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
    assert line == "2 captioned, 1 failed, 0 already in the output, 0 skipped"
    assert [type(o).__name__ for o in outcomes] == ["Captioned", "Failed", "Captioned"]


def test_existing_sidecars_are_skipped_unless_overwrite(folder: Path, settings: Settings) -> None:
    (folder / "b.txt").write_text("hand-written caption")
    items = find_images([str(folder)])
    _, outcomes, line = run_batch(items, settings, RunOptions(sidecars=True))
    assert line == "2 captioned, 0 failed, 0 already in the output, 1 skipped"
    assert (folder / "b.txt").read_text() == "hand-written caption"
    skipped = next(o for o in outcomes if isinstance(o, Skipped))
    assert skipped.reason == f"{folder / 'b.txt'} exists (--overwrite redoes it)"

    _, _, line = run_batch(items, settings, RunOptions(sidecars=True, overwrite=True))
    assert line == "3 captioned, 0 failed, 0 already in the output, 0 skipped"
    assert (folder / "b.txt").read_text() == "a 84x56 image"


def test_two_images_sharing_a_sidecar_name(tmp_path: Path, settings: Settings) -> None:
    write_png(tmp_path / "x.png")
    write_png(tmp_path / "x.jpg.png")  # a different sidecar: x.jpg.txt
    Image.new("RGB", (56, 56)).save(tmp_path / "x.jpg", format="JPEG")
    items = find_images([str(tmp_path)])
    _, outcomes, line = run_batch(items, settings, RunOptions(sidecars=True))
    assert line == "2 captioned, 1 failed, 0 already in the output, 0 skipped"
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

    engine, outcomes, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True))
    assert (line, len(engine.requests)) == (
        "0 captioned, 0 failed, 3 already in the output, 0 skipped",
        0,
    )
    assert all(isinstance(o, AlreadyDone) for o in outcomes)

    # A changed file, prompt, budget or model is a new job for that image.
    write_png(folder / "a.png", (56, 56), "yellow")
    engine, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True))
    assert line == "1 captioned, 0 failed, 2 already in the output, 0 skipped"
    other = CaptionOptions(prompt="Other.", sampling=OPTIONS.sampling)
    _, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True), options=other)
    assert line == "3 captioned, 0 failed, 0 already in the output, 0 skipped"
    engine = FakeEngine(model_id="another-model")
    _, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True), engine=engine)
    assert line == "3 captioned, 0 failed, 0 already in the output, 0 skipped"
    # ... as is another destination.
    _, _, line = run_batch(items, settings, RunOptions(jsonl=tmp_path / "b.jsonl", resume=True))
    assert line == "3 captioned, 0 failed, 0 already in the output, 0 skipped"
    assert len(out.read_text().splitlines()) == 3 + 1 + 3 + 3


def test_a_torn_last_line_is_cut_and_ignored(
    folder: Path, settings: Settings, tmp_path: Path
) -> None:
    out, journal = tmp_path / "results.jsonl", tmp_path / f"results.jsonl{JOURNAL_SUFFIX}"
    items = find_images([str(folder)])
    run_batch(items[:1], settings, RunOptions(jsonl=out))
    for path in (out, journal):
        with path.open("ab") as f:
            f.write(b'{"image": "half a li')  # a process killed mid-write

    _, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True))
    assert line == "2 captioned, 0 failed, 1 already in the output, 0 skipped"
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
    assert not (tmp_path / f"results.jsonl{JOURNAL_SUFFIX}").exists()


def test_a_non_file_has_no_sidecar(settings: Settings) -> None:
    items = [ImageItem("https://example.com/x.png")]
    _, outcomes, line = run_batch(items, settings, RunOptions(sidecars=True))
    assert line == "0 captioned, 1 failed, 0 already in the output, 0 skipped"
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
        opened: list[int] = []

        def open_for_writing() -> bool:  # fails while nobody reads the pipe
            with contextlib.suppress(OSError):
                opened.append(os.open(second, os.O_WRONLY | os.O_NONBLOCK))
            return bool(opened)

        wait_until(open_for_writing, "a reader of the second image during the first caption")
        fd = opened[0]
        os.set_blocking(fd, True)
        os.write(fd, png_bytes(84, 84, "white"))
        os.close(fd)
        fed.set()

    engine = FakeEngine(before_stream=feed_second)
    _, outcomes, line = run_batch([ImageItem(first), ImageItem(second)], settings, engine=engine)
    assert line == "2 captioned, 0 failed, 0 already in the output, 0 skipped"
    assert [o.result.text for o in outcomes if isinstance(o, Captioned)] == [
        "a 56x56 image",
        "a 84x84 image",
    ]


# ---------------------------------------------------------------------------- what resume trusts


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_resume_trusts_the_output_not_the_journal(
    folder: Path, settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    journal = tmp_path / f"results.jsonl{JOURNAL_SUFFIX}"
    items = find_images([str(folder)])
    run_batch(items, settings, RunOptions(jsonl=out))
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[2] + "\n")  # b.png's line deleted

    engine, outcomes, line = caption_and_summary(
        items, settings, RunOptions(jsonl=out, resume=True)
    )
    assert line == "1 captioned, 0 failed, 2 already in the output, 0 skipped"
    assert [r.image.width for r in engine.requests if r.image] == [84]  # b.png only
    assert sorted(str(x["image"]) for x in read_lines(out)) == sorted(i.name for i in items)
    assert outcomes.redone == {f"its line is missing from {out}": 1}
    # The entry whose line was gone is pruned: one entry per line of the output.
    assert sorted(j["task"] for j in read_lines(journal)) == sorted(
        x["taskUUID"] for x in read_lines(out)
    )


def caption_and_summary(
    items: list[ImageItem], settings: Settings, run: RunOptions
) -> tuple[FakeEngine, Summary, str]:
    engine = FakeEngine()
    summary = caption_many(items, engine, settings, OPTIONS, run)
    return engine, summary, summary.line()


def test_a_line_written_just_before_a_crash_counts_by_name(
    folder: Path, settings: Settings, tmp_path: Path
) -> None:
    # Killed after the result line was fsynced, before its journal line: nothing is redone.
    out = tmp_path / "results.jsonl"
    journal = tmp_path / f"results.jsonl{JOURNAL_SUFFIX}"
    items = find_images([str(folder)])
    run_batch(items, settings, RunOptions(jsonl=out))
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:2]))

    engine, _, line = run_batch(items, settings, RunOptions(jsonl=out, resume=True))
    assert (line, engine.requests) == (
        "0 captioned, 0 failed, 3 already in the output, 0 skipped",
        [],
    )
    assert len(read_lines(out)) == 3


def test_a_missing_or_edited_sidecar_is_redone_or_kept(
    folder: Path, settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    items = find_images([str(folder)])
    both = RunOptions(jsonl=out, sidecars=True, resume=True)
    run_batch(items, settings, both)
    (folder / "a.txt").unlink()
    (folder / "b.txt").write_text("edited by hand")

    engine, summary, line = caption_and_summary(items, settings, both)
    # a.png is captioned again; b.png's sidecar is no longer the journaled result, but it
    # exists, and a run without --overwrite never replaces a sidecar.
    assert line == "1 captioned, 0 failed, 1 already in the output, 1 skipped"
    assert [r.image.width for r in engine.requests if r.image] == [56]
    assert (folder / "a.txt").read_text() == "a 56x56 image"
    assert (folder / "b.txt").read_text() == "edited by hand"
    assert summary.redone == {"its sidecar is missing": 1}

    overwrite = RunOptions(jsonl=out, sidecars=True, resume=True, overwrite=True)
    _, summary, line = caption_and_summary(items, settings, overwrite)
    assert line == "1 captioned, 0 failed, 2 already in the output, 0 skipped"
    assert summary.redone == {"its sidecar was changed": 1}
    assert (folder / "b.txt").read_text() == "a 84x56 image"


def test_a_sidecar_only_run_keeps_its_journal_in_the_folder(
    folder: Path, settings: Settings
) -> None:
    items = find_images([str(folder)])
    sidecars = RunOptions(sidecars=True, overwrite=True, resume=True)
    run_batch(items, settings, sidecars)
    journal = folder / ".edgecap-journal.jsonl"
    assert [j["image"] for j in read_lines(journal)] == [i.name for i in items]
    assert find_images([str(folder)]) == items  # a hidden file: never taken for an image

    (folder / "sub" / "c.txt").unlink()
    engine, _, line = run_batch(items, settings, sidecars)
    assert line == "1 captioned, 0 failed, 2 already in the output, 0 skipped"
    assert [r.image.height for r in engine.requests if r.image] == [84]


def test_a_file_name_that_is_not_utf8_resumes(tmp_path: Path, settings: Settings) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1, not UTF-8
    Image.new("RGB", (56, 56)).save(raw, format="PNG")
    out = tmp_path / "results.jsonl"
    items = find_images([str(folder)])
    run = RunOptions(jsonl=out, sidecars=True, resume=True)
    _, _, line = run_batch(items, settings, run)
    assert line == "1 captioned, 0 failed, 0 already in the output, 0 skipped"
    [record] = read_lines(out)  # valid UTF-8 JSON, the name escaped
    assert os.fsencode(str(record["image"])) == raw
    assert os.path.exists(raw[: -len(b".png")] + b".txt")

    engine, _, line = run_batch(items, settings, run)
    assert (line, engine.requests) == (
        "0 captioned, 0 failed, 1 already in the output, 0 skipped",
        [],
    )


# ---------------------------------------------------------------------------- manifests


def test_manifests_list_paths_and_urls_in_jsonl_csv_and_parquet(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lists = folder.parent / "lists"
    lists.mkdir()
    (lists / "m.jsonl").write_text(
        f'{{"image": "{folder / "a.png"}"}}\n"../photos/b.png"\n\n{{"url": "https://x.org/c.jpg"}}\n'
    )
    (lists / "m.csv").write_text(f"path,label\n{folder / 'a.png'},cat\n../photos/b.png,dog\n")
    table = pa.table({"image": [str(folder / "a.png"), "https://x.org/c.jpg"]})
    pq.write_table(table, lists / "m.parquet")

    assert [i.source for i in find_images([str(lists / "m.jsonl")])] == [
        folder / "a.png",
        lists / "../photos/b.png",
        "https://x.org/c.jpg",
    ]
    assert [i.source for i in find_images([str(lists / "m.csv")])] == [
        folder / "a.png",
        lists / "../photos/b.png",
    ]
    assert [i.name for i in find_images([str(lists / "m.parquet")])] == [
        str(folder / "a.png"),
        "https://x.org/c.jpg",
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.jsonl", "[1, 2]\n", "m.jsonl line 1 must be a JSON object or a string."),
        ("m.jsonl", '{"file": "a.png"}\n', "m.jsonl line 1 has no image: give it an 'image',"),
        ("m.jsonl", "{oops\n", "m.jsonl line 1 is not JSON."),
        ("m.csv", "", "The manifest {lists}/m.csv lists no image."),
        ("m.csv", "image\n\n", "m.csv row 2 has no image."),
    ],
)
def test_a_bad_manifest_is_refused_before_any_work(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(InvalidParameter) as caught:
        find_images([str(tmp_path / name)])
    assert message.format(lists=tmp_path) in caught.value.message
