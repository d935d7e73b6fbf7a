"""Running ``edgecap caption`` in-process and reading what it wrote (tests of the command and
of its Ray runner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecap.cli import main
from edgecap.config import load_settings
from edgecap.records import ModelFiles
from edgecap.registry import Registry

NOTICE = (
    "using the demo model edgecap-tiny-random: its weights are random, captions are noise; "
    "get the real model with: edgecap models pull qwen2.5-vl-7b-instruct\n"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``edgecap caption ARGV...`` in this process: exit code, stdout, stderr (no traceback)."""
    code = main(["caption", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def install_tiny(model: ModelFiles) -> None:
    """Register the session's tiny GGUF files as the demo model of this test's home."""
    Registry(load_settings()).register_local(
        "edgecap-tiny-random", model.text, model.mmproj, random_weights=True
    )


def caption_lines(path: Path) -> dict[str, str]:
    """image -> caption of every line in a JSONL output; each image must appear once."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    images = [r["image"] for r in records]
    assert len(images) == len(set(images)), f"an image is captioned twice in {path}"
    return {r["image"]: r["text"] for r in records}
