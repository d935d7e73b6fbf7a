"""Fixtures shared by the whole suite, its isolation, and its tiers.

Helpers (fakes, loopback servers, builders) live in ``tests.support``; test modules never
import each other. Keep each section's fixtures together under its heading.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecap.convert import convert
from edgecap.records import ModelFiles
from edgecap.tiny import make_checkpoint
from tests.support.api import LiveServer, api_settings, install_model, live_server
from tests.support.engines import ScriptedEngineFactory
from tests.support.env import clear_edgecap_variables, edgecap_variables

# -- isolation -------------------------------------------------------------------------------

STRAY_KEY = pytest.StashKey[dict[str, str]]()


def pytest_configure(config: pytest.Config) -> None:
    """Drop the shell's ``EDGECAP_*`` variables before anything reads them.

    ``Settings`` reads ``EDGECAP_*`` whenever it is built, also at import or collection time,
    so this runs first; subprocesses get the cleaned environment (tests.support.env.child_env).
    """
    config.stash[STRAY_KEY] = clear_edgecap_variables()


def pytest_report_header(config: pytest.Config) -> str | None:
    stray = config.stash.get(STRAY_KEY, {})
    return f"ignoring from the shell: {', '.join(sorted(stray))}" if stray else None


@pytest.fixture(autouse=True)
def edgecap_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own EDGECAP_HOME, so nothing touches the real user directory, and
    no other ``EDGECAP_*`` variable (one an earlier test leaked would be removed here)."""
    for name in edgecap_variables():
        monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("edgecap-home")
    monkeypatch.setenv("EDGECAP_HOME", str(home))
    return home


# -- tiers -----------------------------------------------------------------------------------

MODEL_FIXTURES = {"tiny_checkpoint", "tiny_gguf", "tiny_model_files"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the tiny model (any fixture below, directly or not) is ``model``."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


# -- the tiny checkpoint (edgecap.tiny) --------------------------------------------------------


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


# -- a live API server on the scripted engine ----------------------------------------------


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[LiveServer]:
    """One task at a time, a queue of one, and sync waits of half a second."""
    settings = api_settings(tmp_path / "home", queue_size=1, sync_timeout_s=0.5, parallel=1)
    factory = ScriptedEngineFactory(tmp_path / "calls.log")
    with live_server(settings, factory, install_model(settings)) as server:
        server.wait_ready()
        yield server
