"""Fixtures shared by the whole suite. Helpers append their own sections below; keep each
section's fixtures together under its heading."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecap.convert import convert
from edgecap.records import ModelFiles
from edgecap.tiny import make_checkpoint

# -- isolation -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def edgecap_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own EDGECAP_HOME, so nothing touches the real user directory."""
    home = tmp_path_factory.mktemp("edgecap-home")
    monkeypatch.setenv("EDGECAP_HOME", str(home))
    return home


# -- the tiny checkpoint (edgecap.tiny) ------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` preset with seed 0, built once per session. Treat it as read-only."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "hf", "tiny", seed=0)


# -- the tiny model as GGUF (edgecap.convert) -------------------------------------------------


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(text, mmproj)``: ``tiny_checkpoint`` converted to f32, so the weights are exactly the
    checkpoint's. Built once per session; treat the files as read-only."""
    return convert(tiny_checkpoint, tmp_path_factory.mktemp("tiny-gguf"), "f32", progress=False)


# -- the tiny model as the engine sees it ------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_files(tiny_gguf: tuple[Path, Path]) -> ModelFiles:
    """The converted tiny model as ``ModelFiles`` (random weights), for Engine and services."""
    text, mmproj = tiny_gguf
    return ModelFiles(id="edgecap-tiny-random", text=text, mmproj=mmproj, random_weights=True)
