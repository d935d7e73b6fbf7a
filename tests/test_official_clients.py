"""Runware's official Python clients, unmodified, captioning through a live edgecap server
(how they are installed and pointed at us: tests/support/clients.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import LiveServer, api_settings, install_model, live_server
from tests.support.clients import RUNWARE_05, RUNWARE_SDK, client_dir, run_client
from tests.support.engines import ScriptedEngineFactory
from tests.support.images import data_uri, png_bytes

pytestmark = pytest.mark.slow  # each test runs a client in a subprocess

KEY = "client-key"
COST = 0.0004  # the scripted engine's 2.0 s of compute x 0.0002 per second


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("home")
    settings = api_settings(home, api_keys=[KEY])
    with live_server(
        settings, ScriptedEngineFactory(home / "calls.log"), install_model(settings)
    ) as s:
        s.wait_ready()
        yield s


def count_tasks(server: LiveServer, task_type: str) -> float:
    """How many tasks of a type the server has answered successfully (from /metrics)."""
    metrics = httpx.get(  # with keys configured, /metrics needs one too
        server.url.removesuffix("/v1") + "/metrics", headers={"Authorization": f"Bearer {KEY}"}
    ).text
    pattern = (
        rf'edgecap_api_tasks_total{{outcome="(?:success|accepted)",task_type="{task_type}"}} (\S+)'
    )
    return sum(float(value) for value in re.findall(pattern, metrics))


def test_runware_05_uploads_then_captions_over_websocket(
    server: LiveServer, tmp_path: Path
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes())
    uploads_before = count_tasks(server, "imageUpload")
    package = client_dir("runware", "0.5.24")
    result = run_client(package, RUNWARE_05, server.ws_url, str(image), KEY)
    assert result["text"] == "default saw Describe it.\nBriefly."
    assert result["cost"] == COST
    assert count_tasks(server, "imageUpload") == uploads_before + 1
    assert count_tasks(server, "imageCaption") >= 1


@pytest.mark.parametrize("transport", ["rest", "websocket"])
def test_runware_sdk_18_captions_async_with_polling(
    server: LiveServer, tmp_path: Path, transport: str
) -> None:
    image_file = tmp_path / "image.txt"
    image_file.write_text(data_uri(png_bytes()))
    url = server.url if transport == "rest" else server.ws_url
    polls_before = count_tasks(server, "getResponse")
    package = client_dir("runware-sdk", "1.8.0")
    results = run_client(package, RUNWARE_SDK, transport, url, str(image_file), KEY, "sleep:1.5")
    assert len(results) == 1
    assert results[0] | {"taskUUID": "-"} == {
        "taskType": "imageCaption",
        "taskUUID": "-",
        "status": "success",
        "text": "default saw sleep:1.5",
        "cost": COST,
    }
    assert count_tasks(server, "getResponse") > polls_before  # it polled until success


@pytest.mark.parametrize("transport", ["rest", "websocket"])
def test_a_wrong_key_fails_the_sdk_with_an_auth_error(
    server: LiveServer, tmp_path: Path, transport: str
) -> None:
    image_file = tmp_path / "image.txt"
    image_file.write_text(data_uri(png_bytes()))
    url = server.url if transport == "rest" else server.ws_url
    package = client_dir("runware-sdk", "1.8.0")
    outcome = run_client(package, RUNWARE_SDK, transport, url, str(image_file), "wrong", "Hi.")
    # The SDK files invalidApiKey (REST) and a refused authentication (WebSocket) as "auth".
    assert outcome == {"error": "RunwareError", "code": "auth"}
