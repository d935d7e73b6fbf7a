"""`edgecap caption`, run in-process with a fake engine: exact output, exit codes, errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from subprocess import DEVNULL

import pytest

from edgecap.cli import caption as caption_cmd
from edgecap.cli import main
from edgecap.config import DEFAULT_PROMPT, Settings, load_settings
from edgecap.records import ModelFiles, Sampling
from edgecap.registry import Registry
from tests.support.engines import FakeEngine
from tests.support.env import child_env
from tests.support.images import write_png
from tests.support.models import register
from tests.support.waiting import wait_until

NOTICE = (
    "using the demo model edgecap-tiny-random: its weights are random, captions are noise; "
    "get the real model with: edgecap models pull qwen2.5-vl-7b-instruct\n"
)


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> list[FakeEngine]:
    """Every engine the command opens, in order; each one a FakeEngine."""
    opened: list[FakeEngine] = []

    def open_fake(model: ModelFiles, settings: Settings) -> FakeEngine:
        opened.append(FakeEngine(model_id=model.id))
        return opened[-1]

    monkeypatch.setattr(caption_cmd, "open_engine", open_fake)
    return opened


@pytest.fixture
def mine(edgecap_home: Path) -> None:
    register(edgecap_home, "mine")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_png(tmp_path / "photos" / "a.png", (56, 56))
    write_png(tmp_path / "photos" / "b.png", (84, 56))
    write_png(tmp_path / "photos" / "sub" / "c.png", (56, 84))
    return tmp_path / "photos"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["caption", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.usefixtures("mine")
def test_one_image_streams_text(
    folder: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, str(folder / "a.png")) == (0, "a 56x56 image\n", "")
    [engine] = engines
    assert engine.model_id == "mine" and engine.closed
    [request] = engine.requests
    assert (request.prompt, request.system_prompt, request.json_schema) == (
        DEFAULT_PROMPT,
        None,
        None,
    )
    assert request.sampling == Sampling(max_tokens=256)


@pytest.mark.usefixtures("mine", "engines")
def test_json_output_is_exactly_the_api_item(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, str(folder / "a.png"), "--output", "json")
    assert (code, err) == (0, "")
    item = json.loads(out)
    assert list(item) == ["taskType", "taskUUID", "status", "text"]
    assert uuid.UUID(item["taskUUID"]).version == 4
    assert item == {
        "taskType": "imageCaption",
        "taskUUID": item["taskUUID"],
        "status": "success",
        "text": "a 56x56 image",
    }
    assert out == json.dumps(item) + "\n"


@pytest.mark.usefixtures("mine", "engines")
def test_include_cost_is_compute_seconds_times_the_rate(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECAP_COST_PER_SECOND", "0.001")
    code, out, _ = run(capsys, str(folder / "a.png"), "--output", "json", "--include-cost")
    item = json.loads(out)
    assert (code, list(item), item["cost"]) == (
        0,
        ["taskType", "taskUUID", "status", "text", "cost"],
        0.002,  # the fake engine reports 2 s of compute
    )


@pytest.mark.usefixtures("mine")
def test_flags_reach_the_request(
    folder: Path, tmp_path: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "properties": {"tags": {"type": "array"}}}')
    argv = [str(folder / "b.png"), "--prompt", "Tags?", "--system", "Be terse."]
    argv += ["--json-schema", str(schema), "--max-tokens", "9", "--temperature", "0.5"]
    argv += ["--top-p", "0.9", "--top-k", "40", "--seed", "7", "--max-pixels", "784"]
    assert run(capsys, *argv)[0] == 0
    [request] = engines[0].requests
    assert (request.prompt, request.system_prompt) == ("Tags?", "Be terse.")
    assert request.json_schema == {"type": "object", "properties": {"tags": {"type": "array"}}}
    assert request.sampling == Sampling(temperature=0.5, top_p=0.9, top_k=40, seed=7, max_tokens=9)
    assert request.image is not None
    assert (request.image.width, request.image.height) == (28, 28)

    assert run(capsys, str(folder / "b.png"), "--json")[0] == 0
    assert engines[1].requests[0].json_schema == {}


@pytest.mark.usefixtures("mine", "engines")
def test_several_images_as_text_and_jsonl(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(folder))
    assert (code, err) == (0, "3 captioned, 0 failed, 0 already in the output, 0 skipped\n")
    assert out == (
        f"==> {folder / 'a.png'} <==\na 56x56 image\n"
        f"==> {folder / 'b.png'} <==\na 84x56 image\n"
        f"==> {folder / 'sub' / 'c.png'} <==\na 56x84 image\n"
    )
    code, out, _ = run(capsys, str(folder / "*.png"), "--output", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["image"], x["text"]) for x in lines] == [
        (str(folder / "a.png"), "a 56x56 image"),
        (str(folder / "b.png"), "a 84x56 image"),
    ]
    assert list(lines[0]) == ["image", "taskType", "taskUUID", "status", "text"]


@pytest.mark.usefixtures("mine", "engines")
def test_folder_to_files_prints_only_the_summary(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "captions.jsonl"
    code, out, err = run(capsys, str(folder), "--out", str(out_file), "--sidecar")
    assert (code, out, err) == (
        0,
        "",
        "3 captioned, 0 failed, 0 already in the output, 0 skipped\n",
    )
    assert (folder / "b.txt").read_text() == "a 84x56 image"
    assert len(out_file.read_text().splitlines()) == 3

    code, out, err = run(capsys, str(folder), "--out", str(out_file), "--resume")
    assert (code, out, err) == (
        0,
        "",
        "0 captioned, 0 failed, 3 already in the output, 0 skipped\n",
    )


@pytest.mark.usefixtures("mine", "engines")
def test_a_bad_file_is_reported_and_the_exit_code_says_so(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    code, out, err = run(capsys, str(folder), "--output", "json")
    assert code == 1
    assert [json.loads(line)["text"] for line in out.splitlines()] == [
        "a 56x56 image",
        "a 84x56 image",
        "a 56x84 image",
    ]
    first, summary = err.splitlines()
    assert first.startswith(f"{folder / 'broken.jpg'}: ")
    assert "not a jpeg" not in first and len(first) > len(str(folder / "broken.jpg")) + 10
    assert summary == "3 captioned, 1 failed, 0 already in the output, 0 skipped"


@pytest.mark.usefixtures("engines")
def test_the_demo_model_says_its_captions_are_noise(
    edgecap_home: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(edgecap_home, "edgecap-tiny-random")
    assert run(capsys, str(folder / "a.png")) == (0, "a 56x56 image\n", NOTICE)


@pytest.mark.usefixtures("engines")
def test_without_any_model_the_error_says_how_to_get_one(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, str(folder / "a.png"))
    assert (code, out) == (2, "")
    assert err == (
        "edgecap: error: no model is installed: run `edgecap models pull "
        "qwen2.5-vl-7b-instruct` (about 6 GB), `edgecap models import PATH` with a pack, or "
        "`make demo` for the tiny test model\n"
    )


@pytest.mark.usefixtures("mine")
def test_a_typo_fails_before_the_model_loads(
    tmp_path: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, str(tmp_path / "nope.jpg"))
    assert (code, out, engines) == (2, "", [])
    assert err == (
        f"edgecap: error: No such file or directory: '{tmp_path / 'nope.jpg'}'. Check the path.\n"
    )


@pytest.mark.usefixtures("mine")
def test_resume_without_files_is_refused(
    folder: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, str(folder), "--resume")
    assert (code, engines) == (2, [])
    assert err == (
        "edgecap: error: --resume needs results written to files (--out FILE or --sidecar): "
        "results printed to the terminal cannot be resumed.\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--temperature", "-1"],
            "argument --temperature: -1 is out of range: use from 0.0 to 2.0",
        ),
        (["--max-tokens", "lots"], "argument --max-tokens: 'lots' is not a whole number"),
        (["--max-pixels", "100"], "argument --max-pixels: 100 is out of range: use 784 or more"),
        (["--output", "xml"], "argument --output: invalid choice: 'xml'"),
        (["--json", "--json-schema", "s.json"], "argument --json-schema: not allowed with"),
        (["--json-schema", "missing.json"], "argument --json-schema: cannot read missing.json"),
    ],
)
def test_bad_flags_fail_as_they_are_parsed(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(SystemExit) as caught:
        main(["caption", "x.png", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_a_schema_file_must_hold_an_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "s.json"
    schema.write_text("[1, 2]")
    with pytest.raises(SystemExit):
        main(["caption", "x.png", "--json-schema", str(schema)])
    err = capsys.readouterr().err
    assert err.endswith(
        f"argument --json-schema: {schema} must hold a JSON object (a JSON schema)\n"
    )


# ---------------------------------------------------------------------------- docs/cli.md

CLI_DOCS = Path(__file__).parent.parent / "docs" / "cli.md"
HELP_BLOCK = re.compile(r"(<!-- help: (\w+) -->\n).*?(<!-- end help -->)", re.DOTALL)


def help_text(command: str) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        main([command, "--help"])
    return buffer.getvalue()


def with_current_help(docs: str) -> str:
    def block(match: re.Match[str]) -> str:
        return f"{match[1]}```text\n{help_text(match[2])}```\n{match[3]}"

    return HELP_BLOCK.sub(block, docs)


def test_the_reference_in_the_docs_is_the_current_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    docs = CLI_DOCS.read_text(encoding="utf-8")
    assert HELP_BLOCK.search(docs)
    assert docs == with_current_help(docs), (
        "docs/cli.md is out of date: PYTHONPATH=. .venv/bin/python tests/test_cli_caption.py "
        "--update-docs"
    )


if __name__ == "__main__" and sys.argv[1:] == ["--update-docs"]:
    os.environ["COLUMNS"] = "100"
    CLI_DOCS.write_text(with_current_help(CLI_DOCS.read_text(encoding="utf-8")), encoding="utf-8")


# ---------------------------------------------------------------------------- the real tiny model


def install_tiny(model: ModelFiles) -> None:
    """Register the session's tiny GGUF files as the demo model of this test's home."""
    Registry(load_settings()).register_local(
        "edgecap-tiny-random", model.text, model.mmproj, random_weights=True
    )


def test_real_one_image_text_json_and_cost(
    tiny_model_files: ModelFiles, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_tiny(tiny_model_files)
    image = str(folder / "b.png")
    code, streamed, err = run(capsys, image, "--max-tokens", "12")
    assert (code, err) == (0, NOTICE)
    code, out, _ = run(capsys, image, "--max-tokens", "12", "--output", "json", "--include-cost")
    item = json.loads(out)
    assert code == 0
    assert list(item) == ["taskType", "taskUUID", "status", "text", "cost"]
    assert (item["taskType"], item["status"]) == ("imageCaption", "success")
    assert uuid.UUID(item["taskUUID"]).version == 4
    assert item["text"] and streamed.strip() == item["text"]  # greedy: the same caption twice
    assert isinstance(item["cost"], float) and item["cost"] > 0


def test_real_folder_to_sidecars_and_jsonl_with_a_bad_file(
    tiny_model_files: ModelFiles,
    folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    install_tiny(tiny_model_files)
    (folder / "broken.jpg").write_bytes(b"GIF89a, or not")
    out_file = tmp_path / "captions.jsonl"
    code, out, err = run(
        capsys, str(folder), "--sidecar", "--out", str(out_file), "--max-tokens", "6"
    )
    assert (code, out) == (1, "")
    notice, broken, summary = err.splitlines()
    assert notice + "\n" == NOTICE
    assert broken.startswith(f"{folder / 'broken.jpg'}: The file '{folder / 'broken.jpg'}' ")
    assert summary == "3 captioned, 1 failed, 0 already in the output, 0 skipped"
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [x["image"] for x in lines] == [
        str(folder / "a.png"),
        str(folder / "b.png"),
        str(folder / "sub" / "c.png"),
    ]
    for line in lines:
        sidecar = Path(line["image"]).with_suffix(".txt")
        assert sidecar.read_text(encoding="utf-8") == line["text"] != ""
    assert not (folder / "broken.txt").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_real_resume_after_the_process_was_killed(
    tiny_model_files: ModelFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_tiny(tiny_model_files)
    photos = tmp_path / "photos"
    names = ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]
    for i, name in enumerate(names):
        write_png(photos / name, (56 + 28 * i, 56), ("red", "green", "blue")[i % 3])
    # c.png is a named pipe: the run blocks reading it, right after journaling a and b.
    (photos / "c.png").unlink()
    os.mkfifo(photos / "c.png")
    out_file, journal = tmp_path / "captions.jsonl", tmp_path / "captions.jsonl.journal"
    argv = ["caption", str(photos), "--out", str(out_file)]
    argv += ["--max-tokens", "6"]

    env = child_env()
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgecap", *argv], env=env, stdout=DEVNULL, stderr=stderr
        )
        try:
            wait_for_lines(journal, 2, process)
        finally:
            process.kill()
            process.wait(30)
    before = out_file.read_text().splitlines()
    assert len(before) == 2 and len(journal.read_text().splitlines()) == 2

    (photos / "c.png").unlink()
    write_png(photos / "c.png", (112, 56), "blue")
    code, _, err = run(capsys, *argv[1:], "--resume")
    assert (code, err.splitlines()[-1]) == (
        0,
        "4 captioned, 0 failed, 2 already in the output, 0 skipped",
    )
    after = out_file.read_text().splitlines()
    assert after[:2] == before  # nothing lost, nothing redone
    assert [json.loads(line)["image"] for line in after] == [str(photos / n) for n in names]
    assert len(journal.read_text().splitlines()) == 6


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[bytes]) -> None:
    """Wait until ``path`` holds ``count`` lines (a guard against hanging, not a timing)."""

    def written() -> bool:
        assert process.poll() is None, "the captioning process ended before it was killed"
        return path.exists() and len(path.read_bytes().splitlines()) >= count

    wait_until(written, f"{path} to reach {count} lines", 300, 0.05)


# ---------------------------------------------------------------- resume trusts the output


@pytest.fixture
def five(tmp_path: Path) -> Path:
    """five/a.png .. five/e.png, of different sizes."""
    for i, name in enumerate("abcde"):
        write_png(tmp_path / "five" / f"{name}.png", (56 + 28 * i, 56), ("red", "blue")[i % 2])
    return tmp_path / "five"


def caption_lines(path: Path) -> dict[str, str]:
    """image -> caption of every line in a JSONL output; each image must appear once."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    images = [r["image"] for r in records]
    assert len(images) == len(set(images)), f"an image is captioned twice in {path}"
    return {r["image"]: r["text"] for r in records}


def summary_of(err: str) -> list[str]:
    """The lines the run printed about itself (the random-weights notice left out)."""
    return [line for line in err.splitlines() if line + "\n" != NOTICE]


def test_real_resume_after_the_output_was_deleted_captions_everything_again(
    tiny_model_files: ModelFiles, five: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_tiny(tiny_model_files)
    out_file = tmp_path / "run.jsonl"
    argv = [str(five), "--out", str(out_file), "--resume", "--max-tokens", "6"]
    code, _, err = run(capsys, *argv)
    assert (code, summary_of(err)) == (
        0,
        ["5 captioned, 0 failed, 0 already in the output, 0 skipped"],
    )
    first = caption_lines(out_file)
    assert not list(Path(os.environ["EDGECAP_HOME"]).glob("*journal*"))  # none global

    out_file.unlink()  # start over
    code, _, err = run(capsys, *argv)
    assert (code, summary_of(err)) == (
        0,
        [
            f"resume: 5 journal entries re-done (5 because its line is missing from {out_file})",
            "5 captioned, 0 failed, 0 already in the output, 0 skipped",
        ],
    )
    assert caption_lines(out_file) == first  # greedy: the same captions
    journal = out_file.with_name("run.jsonl.journal")
    assert len(journal.read_text().splitlines()) == 5  # the stale entries were pruned

    code, _, err = run(capsys, *argv)
    assert (code, summary_of(err)) == (
        0,
        ["0 captioned, 0 failed, 5 already in the output, 0 skipped"],
    )


def test_real_resume_recaptions_exactly_a_deleted_line(
    tiny_model_files: ModelFiles, five: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_tiny(tiny_model_files)
    out_file = tmp_path / "run.jsonl"
    argv = [str(five), "--out", str(out_file), "--max-tokens", "6"]
    assert run(capsys, *argv)[0] == 0
    first = caption_lines(out_file)
    lines = out_file.read_text().splitlines(keepends=True)
    out_file.write_text("".join(lines[:2] + lines[3:]))  # c.png's line deleted

    code, _, err = run(capsys, *argv, "--resume")
    assert (code, summary_of(err)[-1]) == (
        0,
        "1 captioned, 0 failed, 4 already in the output, 0 skipped",
    )
    after = out_file.read_text().splitlines(keepends=True)
    assert after[:4] == lines[:2] + lines[3:]  # the others untouched
    assert json.loads(after[4])["image"] == str(five / "c.png")
    assert caption_lines(out_file) == first


def test_real_resume_recaptions_a_deleted_sidecar(
    tiny_model_files: ModelFiles, five: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_tiny(tiny_model_files)
    out_file = tmp_path / "run.jsonl"
    argv = [str(five), "--sidecar", "--out", str(out_file), "--max-tokens", "6", "--resume"]
    assert run(capsys, *argv)[0] == 0
    caption = (five / "d.txt").read_text(encoding="utf-8")
    (five / "d.txt").unlink()

    code, _, err = run(capsys, *argv)
    assert (code, summary_of(err)) == (
        0,
        [
            "resume: 1 journal entry re-done (1 because its sidecar is missing)",
            "1 captioned, 0 failed, 4 already in the output, 0 skipped",
        ],
    )
    assert (five / "d.txt").read_text(encoding="utf-8") == caption
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    # The JSONL output had d.png's line already: it gains a second line for the new result.
    assert [r["image"] for r in records].count(str(five / "d.png")) == 2
    assert len(records) == 6


def test_real_an_output_moved_elsewhere_resumes_from_its_own_content(
    tiny_model_files: ModelFiles, five: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_tiny(tiny_model_files)
    first, moved = tmp_path / "first" / "run.jsonl", tmp_path / "moved" / "run.jsonl"
    flags = ["--max-tokens", "6", "--resume"]
    assert run(capsys, str(five / "[abc].png"), "--out", str(first), *flags)[0] == 0
    moved.parent.mkdir()
    for name in ("run.jsonl", "run.jsonl.journal"):
        (first.parent / name).rename(moved.parent / name)

    code, _, err = run(capsys, str(five), "--out", str(moved), *flags)
    assert (code, summary_of(err)) == (
        0,
        ["2 captioned, 0 failed, 3 already in the output, 0 skipped"],
    )
    assert sorted(caption_lines(moved)) == [str(five / f"{n}.png") for n in "abcde"]

    # Only the results file moved (no journal with it): its lines still count, by image.
    alone = tmp_path / "alone" / "run.jsonl"
    alone.parent.mkdir()
    moved.rename(alone)
    code, _, err = run(capsys, str(five), "--out", str(alone), *flags)
    assert (code, summary_of(err)) == (
        0,
        ["0 captioned, 0 failed, 5 already in the output, 0 skipped"],
    )

    # The same output name in another directory is a new output: everything is captioned.
    code, _, err = run(capsys, str(five), "--out", str(tmp_path / "fresh" / "run.jsonl"), *flags)
    assert (code, summary_of(err)) == (
        0,
        ["5 captioned, 0 failed, 0 already in the output, 0 skipped"],
    )


@pytest.mark.usefixtures("mine", "engines")
def test_a_file_name_that_is_not_utf8_prints_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    write_png(folder / "a.png")
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    write_png(Path(os.fsdecode(raw)))
    out_file = tmp_path / "run.jsonl"
    code, out, err = run(capsys, str(folder), "--out", str(out_file), "--output", "text")
    assert (code, err) == (0, "2 captioned, 0 failed, 0 already in the output, 0 skipped\n")
    assert f"==> {folder}/caf\ufffd.png <==" in out.splitlines()
    code, out, err = run(capsys, str(folder), "--out", str(out_file), "--resume")
    assert (code, out, err) == (
        0,
        "",
        "0 captioned, 0 failed, 2 already in the output, 0 skipped\n",
    )


# ------------------------------------------------------ --ray flags (the cluster: test_ray.py)


@pytest.mark.usefixtures("mine")
def test_ray_without_ray_installed_says_how_to_install_it(
    folder: Path,
    engines: list[FakeEngine],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, out, err = run(capsys, str(folder), "--ray")
    assert (code, out, engines) == (2, "", [])
    assert err == "edgecap: error: --ray needs Ray, an optional extra: pip install 'edgecap[ray]'\n"


@pytest.mark.usefixtures("mine")
def test_engine_sizes_need_ray(
    folder: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, str(folder), "--engines", "2")
    assert (code, engines) == (2, [])
    assert err == "edgecap: error: --engines needs --ray: it sizes the engines of a cluster.\n"
