"""Runware's official Python clients, run unmodified in subprocesses.

``runware`` 0.5.24 and ``runware-sdk`` 1.8.0 both install a package named ``runware``, so
`make test` installs each into a directory of its own under ``<venv>/clients/`` and a client
runs with that directory on PYTHONPATH. How they are pointed at us, found in their source:

- ``runware`` 0.5.24: ``Runware(api_key=..., url="ws://host:port/v1")``; WebSocket only.
- ``runware-sdk`` 1.8.0: ``Runware(api_key=..., transport="rest"|"websocket",
  http_base_url=..., ws_base_url=..., validate=False)``. ``validate`` (default False) would
  fetch JSON schemas from schemas.runware.ai; its model registry is only consulted when a task
  has no ``taskType`` or names a model by slug, and we send both ``taskType`` and an AIR id.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.env import child_env

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
    """The directory holding one client package, which `make test` installs (never the test)."""
    target = CLIENTS_DIR / f"{name}-{version}"
    if not (target / "runware" / "__init__.py").is_file():
        pytest.fail(
            f"{name}=={version} is not installed in {target}: run `make test`, which installs "
            "the official Runware clients there"
        )
    return target


def run_client(package: Path, script: str, *args: str) -> Any:
    env = child_env(PYTHONPATH=str(package))
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
