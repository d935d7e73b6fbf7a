"""The token-embedding table's mapped pages are given back after load, and nothing changes.

Real llama.cpp on the tiny model, whose table (real 152k vocabulary) is most of its text file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from llama_cpp._internals import LlamaModel

from edgecap.config import Settings
from edgecap.engine import gguf_check, memory
from edgecap.engine.engine import Engine
from edgecap.records import CaptionRequest, ModelFiles

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise: Linux")


def rss_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_the_embedding_pages_leave_the_resident_set(tiny_gguf: tuple[Path, Path]) -> None:
    text = tiny_gguf[0]
    table = gguf_check.read_header(text).tensors["token_embd.weight"].nbytes
    llama_cpp.llama_backend_init()
    model = LlamaModel(
        path_model=str(text), params=llama_cpp.llama_model_default_params(), verbose=False
    )
    try:
        assert memory.file_mappings(text), "llama.cpp did not map the file"
        before = rss_file_bytes()
        released = memory.release_sparse_tensors(text)
        after = rss_file_bytes()
    finally:
        model.close()
    assert released >= table - 2 * 4096  # whole pages inside the tensor
    assert before - after >= 0.9 * table  # they were resident (prefetched) and now are not


def test_logits_are_the_same_with_and_without_the_release(
    tiny_model_files: ModelFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path, image_cache_entries=0)
    request = CaptionRequest(image=None, prompt="A prompt that reads many embedding rows.")
    with Engine(tiny_model_files, settings) as engine:
        released = engine.prompt_logits(request)
    monkeypatch.setattr(memory, "release_sparse_tensors", lambda _text: 0)
    with Engine(tiny_model_files, settings) as engine:
        kept = engine.prompt_logits(request)
    np.testing.assert_array_equal(released, kept)
