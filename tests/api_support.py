"""Helpers for the API tests: a real uvicorn server on a loopback port, test images, an image
host, and a model registry whose tiny model also answers to the 7B's Runware names.

The server runs the real app with the real TaskService; the engine behind it is either the
scripted fake from test_worker (fast) or the real tiny model (proof tests).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
from PIL import Image

from edgecap.config import Settings
from edgecap.records import ModelFiles
from edgecap.registry import Catalog, Registry, load_catalog
from edgecap.runtime.service import TaskService
from edgecap.runtime.worker import EngineFactory
from edgecap.server import create_app
from edgecap.server.app import uvicorn_options

TINY_ID = "edgecap-tiny-random"
SEVEN_B_NAMES = ("runware:152@2", "alibaba-qwen2-5-vl-7b-instruct")
START_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 120.0
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


class LiveServer:
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
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.service.ready:
            assert time.monotonic() < deadline, "the model never loaded"
            time.sleep(0.05)


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


# ---------------------------------------------------------------------------- images


def png_bytes(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


@dataclass
class ImageHost:
    """A local http.server that serves fixed bytes at every path; counts the requests."""

    server: ThreadingHTTPServer
    requests: list[str]

    def url(self, path: str = "/picture.png") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"


@contextmanager
def image_host(body: bytes, content_type: str = "image/png") -> Iterator[ImageHost]:
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield ImageHost(server, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
