"""The API under test: the real app and TaskService served by uvicorn on a loopback port, and a
model registry whose tiny model also answers to the 7B's Runware names.

The engine behind the server is either ``tests.support.engines.ScriptedEngineFactory`` (fast)
or the real tiny model (proof tests).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets

from edgecap.config import Settings
from edgecap.records import ModelFiles
from edgecap.registry import Catalog, Registry, load_catalog
from edgecap.runtime.service import TaskService
from edgecap.runtime.worker import EngineFactory
from edgecap.server import create_app
from edgecap.server.app import uvicorn_options
from tests.support.urls import LoopbackUrls
from tests.support.waiting import wait_until

TINY_ID = "edgecap-tiny-random"
SEVEN_B_NAMES = ("runware:152@2", "alibaba-qwen2-5-vl-7b-instruct")
START_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
UUID_V4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def api_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a test server: its own home, loopback allowed, quick timeouts."""
    values: dict[str, Any] = {
        "home": home,
        "url_allowlist": ["127.0.0.1"],
        "delivery_allowlist": ["127.0.0.1"],
        "fetch_timeout_s": 10.0,
        "sync_timeout_s": 60.0,
        "webhook_retries": 3,
    }
    return Settings(**(values | overrides))


def tiny_as_7b_catalog() -> Catalog:
    """The shipped catalog, except that the 7B's Runware names mean the tiny model."""
    catalog = load_catalog()
    tiny = catalog.get(TINY_ID)
    models = tuple(
        tiny.model_copy(update={"aliases": (*tiny.aliases, *SEVEN_B_NAMES)})
        if model.id == TINY_ID
        else model
        for model in catalog.models
        if model.id != "qwen2.5-vl-7b-instruct"
    )
    return catalog.model_copy(update={"default": TINY_ID, "models": models})


def install_model(settings: Settings, files: ModelFiles | None = None) -> Registry:
    """Register the tiny model's files (or two placeholder files, for the scripted engine)
    and return a registry in which ``runware:152@2`` names it."""
    if files is None:
        stand_in = settings.home / "stand-in"
        stand_in.mkdir(parents=True, exist_ok=True)
        (stand_in / "text.gguf").write_bytes(b"scripted engine: text")
        (stand_in / "mmproj.gguf").write_bytes(b"scripted engine: mmproj")
        files = ModelFiles(TINY_ID, stand_in / "text.gguf", stand_in / "mmproj.gguf", True)
    Registry(settings).register_local(TINY_ID, files.text, files.mmproj, random_weights=True)
    return Registry(settings, catalog=tiny_as_7b_catalog())


# ---------------------------------------------------------------------------- the server


class LiveServer(LoopbackUrls):
    """The app served by uvicorn from a thread, on a free loopback port."""

    def __init__(self, settings: Settings, service: TaskService, registry: Registry) -> None:
        self.settings = settings
        self.service = service
        app = create_app(settings, service, registry)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            **uvicorn_options(settings),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        wait_until(self._started, "uvicorn to start", START_TIMEOUT_S)
        return self

    def _started(self) -> bool:
        assert self.thread.is_alive(), "uvicorn stopped while starting"
        return bool(self.server.started)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def wait_ready(self) -> None:
        wait_until(lambda: self.service.ready, "the model to load", READY_TIMEOUT_S, 0.05)


@contextmanager
def live_server(
    settings: Settings,
    engine_factory: EngineFactory | None,
    registry: Registry,
    clock: Callable[[], float] = time.time,
) -> Iterator[LiveServer]:
    """A started server; ``engine_factory`` None means the real engine (registry's model)."""
    service = TaskService(settings, engine_factory, clock=clock)
    server = LiveServer(settings, service, registry).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def scripted_server(settings: Settings, *, ready: bool = True) -> Iterator[LiveServer]:
    """A started server on the scripted engine (its log beside the home), the model installed;
    once the engine is up if ``ready``."""
    from tests.support.engines import ScriptedEngineFactory

    factory = ScriptedEngineFactory(settings.home / "engine.log")
    with live_server(settings, factory, install_model(settings)) as server:
        if ready:
            server.wait_ready()
        yield server


def post(server: LiveServer, body: Any, **kwargs: Any) -> httpx.Response:
    """POST a body (JSON-encoded unless it is bytes) to the server's /v1."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(server.url, content=content, headers=headers, timeout=120, **kwargs)


def ws_exchange(url: str, messages: list[Any], replies: int, timeout: float = 60) -> list[Any]:
    """Send messages on one WebSocket connection and collect the first ``replies`` frames."""

    async def exchange() -> list[Any]:
        async with websockets.connect(url, max_size=None) as socket:
            for message in messages:
                await socket.send(json.dumps(message))
            return [
                json.loads(await asyncio.wait_for(socket.recv(), timeout)) for _ in range(replies)
            ]

    return asyncio.run(exchange())


def new_uuid() -> str:
    return str(uuid.uuid4())
