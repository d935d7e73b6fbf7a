"""`edgecap demo`: the real build of the tiny model end to end, and its choices with fakes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import edgecap.tiny
from edgecap.cli import caption as caption_cmd
from edgecap.cli import demo, main
from edgecap.config import Settings, load_settings
from edgecap.records import ModelFiles
from edgecap.registry import Registry, load_catalog
from tests.support.engines import FakeEngine
from tests.support.models import register

NOISE_NOTICE = (
    "That caption is noise: edgecap-tiny-random has random weights; it only shows that "
    "everything runs ({seconds} s). For real captions install the real model: `edgecap models "
    "pull qwen2.5-vl-7b-instruct` (about 6 GB), or on an offline machine `edgecap models import "
    "PATH` with a pack made by `edgecap models export`."
)


def run(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, list[dict[str, str]]], str]:
    code = main(["demo"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out), err


def seconds_of(notice_line: str) -> str:
    return notice_line.split("everything runs (")[1].split(" s)")[0]


@pytest.mark.slow
def test_demo_builds_the_tiny_model_once_and_captions_the_sample(
    edgecap_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, response, err = run(capsys)
    assert code == 0
    [item] = response["data"]
    assert list(item) == ["taskType", "taskUUID", "status", "text"]
    assert (item["taskType"], item["status"]) == ("imageCaption", "success")
    assert uuid.UUID(item["taskUUID"]).version == 4 and item["text"]
    lines = [line for line in err.splitlines() if not line.startswith("load_hparams:")]
    assert lines[0] == (
        "building the demo model edgecap-tiny-random (random weights; once, a few seconds) ..."
    )
    assert lines[-1] == NOISE_NOTICE.format(seconds=seconds_of(lines[-1]))
    built = edgecap_home / "demo" / "edgecap-tiny-random"
    assert sorted(p.name for p in built.iterdir()) == [
        "edgecap-tiny-random.gguf",
        "mmproj-edgecap-tiny-random.gguf",
    ]
    model = Registry(load_settings()).resolve(None)
    assert (model.id, model.random_weights, model.text.parent) == (
        "edgecap-tiny-random",
        True,
        built,
    )

    code, again, err = run(capsys)  # reuses the model: no build, the same greedy caption
    assert code == 0 and again["data"][0]["text"] == item["text"]
    assert "building" not in err

    code = main(["doctor", "--no-verify"])  # and the doctor's smoke caption runs on it for real
    out = capsys.readouterr().out
    assert code == 0
    assert "ok    smoke     edgecap-tiny-random captioned the sample in " in out


def test_a_real_model_is_used_when_installed(
    edgecap_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    register(edgecap_home, "mine")
    opened: list[FakeEngine] = []

    def open_fake(model: ModelFiles, settings: Settings) -> FakeEngine:
        opened.append(FakeEngine(model_id=model.id))
        return opened[-1]

    monkeypatch.setattr(caption_cmd, "open_engine", open_fake)
    code, response, err = run(capsys)
    assert code == 0
    assert response["data"][0]["text"] == "a 644x476 image"  # the sample, resized to the budget
    assert err.startswith("captioned with mine in ") and err.endswith(" s\n")
    assert [e.model_id for e in opened] == ["mine"] and opened[0].closed
    assert opened[0].requests[0].sampling.max_tokens == 256
    assert not (edgecap_home / "demo").exists()


def test_built_files_are_reused_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "demo" / "edgecap-tiny-random"
    dest.mkdir(parents=True)
    for name in ("edgecap-tiny-random.gguf", "mmproj-edgecap-tiny-random.gguf"):
        (dest / name).write_bytes(b"gguf")

    def no_build(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the demo model was built again")

    monkeypatch.setattr(edgecap.tiny, "make_checkpoint", no_build)
    assert demo.build_demo_files(dest) == (
        dest / "edgecap-tiny-random.gguf",
        dest / "mmproj-edgecap-tiny-random.gguf",
    )


def test_the_demo_model_is_the_catalogs_model_of_random_weights() -> None:
    known = load_catalog().find(demo.DEMO_MODEL)
    assert known is not None and known.random_weights and not known.pullable
