"""Runware's official Python clients, unmodified, captioning through a live edgecap server.

``runware`` 0.5.24 and ``runware-sdk`` 1.8.0 both install a package named ``runware``, so in
one environment each overwrites the other's files (``import runware`` then fails). Each is
installed into a directory of its own under ``<venv>/clients/`` and run in a subprocess with
that directory on PYTHONPATH. How they are pointed at us, found in their source:

- ``runware`` 0.5.24: ``Runware(api_key=..., url="ws://host:port/v1")``; WebSocket only.
- ``runware-sdk`` 1.8.0: ``Runware(api_key=..., transport="rest"|"websocket",
  http_base_url=..., ws_base_url=..., validate=False)``. ``validate`` (default False) would
  fetch JSON schemas from schemas.runware.ai; its model registry is only consulted when a task
  has no ``taskType`` or names a model by slug, and we send both ``taskType`` and an AIR id.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import (
    LiveServer,
    api_settings,
    data_uri,
    install_model,
    live_server,
    png_bytes,
)
from test_worker import ScriptedEngineFactory

KEY = "client-key"
COST = 0.0004  # the scripted engine's 2.0 s of compute x 0.0002 per second
CLIENTS_DIR = Path(sys.prefix) / "clients"
CLIENT_TIMEOUT_S = 120

RUNWARE_05 = """
import asyncio, json, sys
from runware import IImageCaption, Runware

async def main(url, image_path):
    client = Runware(api_key=sys.argv[3], url=url)
    await client.connect()
    result = await client.imageCaption(IImageCaption(
        inputImage=image_path, prompt=["Describe it.", "Briefly."], includeCost=True,
        model="runware:152@2"))
    print(json.dumps({"taskUUID": result.taskUUID, "text": result.text, "cost": result.cost}))
    await client.disconnect()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

RUNWARE_SDK = """
import asyncio, json, sys
from pathlib import Path
from runware import Runware

async def main(transport, url, image_file, key, prompt):
    where = {"http_base_url": url} if transport == "rest" else {"ws_base_url": url}
    try:
        async with Runware(api_key=key, transport=transport, validate=False, **where) as client:
            results = await client.run({
                "taskType": "caption", "model": "runware:152@2", "includeCost": True,
                "inputs": {"image": Path(image_file).read_text()}, "prompt": prompt,
            })
    except Exception as exc:
        results = {"error": type(exc).__name__, "code": getattr(exc, "code", None)}
    print(json.dumps(results))

asyncio.run(main(*sys.argv[1:]))
"""


def client_dir(name: str, version: str) -> Path:
    """The directory holding one client package, installed there on first use."""
    target = CLIENTS_DIR / f"{name}-{version}"
    if not (target / "runware" / "__init__.py").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "--target",
                str(target),
                f"{name}=={version}",
            ],
            check=True,
            timeout=300,
        )
    return target


def run_client(package: Path, script: str, *args: str) -> Any:
    env = {**os.environ, "PYTHONPATH": str(package)}
    env.pop("RUNWARE_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


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
