"""Running ``edgecap caption`` in-process, and what its runs leave behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecap.cli import main

NOTICE = (
    "using the demo model edgecap-tiny-random: its weights are random, captions are noise; "
    "get the real model with: edgecap models pull qwen2.5-vl-7b-instruct\n"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``edgecap caption *argv`` in-process: (exit code, stdout, stderr); never a traceback."""
    code = main(["caption", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def caption_lines(path: Path) -> dict[str, str]:
    """image -> caption of every line in a JSONL output; each image must appear once."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    images = [r["image"] for r in records]
    assert len(images) == len(set(images)), f"an image is captioned twice in {path}"
    return {r["image"]: r["text"] for r in records}
