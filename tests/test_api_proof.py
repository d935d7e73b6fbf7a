"""Issue 4's proof: the caption API on the REAL tiny model, through a real uvicorn server.

The tiny model has random weights, so its captions are noise — but real noise, produced by
llama.cpp from the image the server decoded, in the engine process the real TaskService runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecap.config import Settings
from edgecap.records import ModelFiles
from tests.support.api import LiveServer, api_settings, install_model, live_server, new_uuid, post
from tests.support.clients import RUNWARE_05, RUNWARE_SDK, client_dir, run_client
from tests.support.env import child_env
from tests.support.http import Receiver, free_port, image_host
from tests.support.images import b64, data_uri, png_bytes
from tests.support.tasks import FakeClock
from tests.support.waiting import wait_until

KEY = "proof-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_TOKENS = 8
RESTART_TIMEOUT_S = 120.0
KILL_TIMEOUT_S = 30.0


def sample_photo() -> bytes:
    """A small picture with some structure (a flat colour would be too easy to cache wrongly)."""
    return png_bytes(96, 64, (30, 140, 90))


def caption(image: str, **fields: Any) -> dict[str, Any]:
    return {
        "taskType": "caption",
        "taskUUID": new_uuid(),
        "model": "runware:152@2",
        "prompt": "Describe the picture.",
        "inputs": {"image": image},
        "maxTokens": MAX_TOKENS,
        **fields,
    }


def poll(server: LiveServer, task_uuid: str) -> httpx.Response:
    return post(server, [{"taskType": "getResponse", "taskUUID": task_uuid}], headers=AUTH)


@pytest.fixture(scope="module")
def proof_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return api_settings(tmp_path_factory.mktemp("home"), api_keys=[KEY], n_threads=2)


@pytest.fixture(scope="module")
def server(proof_settings: Settings, tiny_model_files: ModelFiles) -> Iterator[LiveServer]:
    registry = install_model(proof_settings, tiny_model_files)
    with live_server(proof_settings, None, registry) as server:
        server.wait_ready()
        yield server


# ---------------------------------------------------------------------------- 1: four requests


def test_four_image_sources_caption_on_the_tiny_model(server: LiveServer) -> None:
    photo = sample_photo()
    uploaded = post(
        server,
        [{"taskType": "imageUpload", "taskUUID": new_uuid(), "image": data_uri(photo)}],
        headers=AUTH,
    ).json()["data"][0]["imageUUID"]
    with image_host(photo) as host:
        sources = {
            "url": (host.url(), True),
            "data URI": (data_uri(photo), False),
            "base64": (b64(photo), True),
            "upload": (uploaded, False),
        }
        answers = {}
        for name, (image, include_cost) in sources.items():
            task = caption(image, includeCost=include_cost)
            answer = post(server, [task], headers=AUTH)
            assert answer.status_code == 200, answer.text
            answers[name] = (task, answer.json())
        assert host.requests == ["/picture.png"]
    for name, (task, body) in answers.items():
        (item,) = body["data"]
        assert set(body) == {"data"}, name
        keys = {"taskType", "taskUUID", "text", "status"} | (
            {"cost"} if task["includeCost"] else set()
        )
        assert set(item) == keys, name
        assert (item["taskType"], item["taskUUID"], item["status"]) == (
            "imageCaption",
            task["taskUUID"],
            "success",
        )
        assert isinstance(item["text"], str)
        if task["includeCost"]:
            assert isinstance(item["cost"], float) and item["cost"] > 0


# ---------------------------------------------------------------------------- 2: official clients


def test_official_clients_caption_on_the_tiny_model(server: LiveServer, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(sample_photo())
    old = run_client(client_dir("runware", "0.5.24"), RUNWARE_05, server.ws_url, str(photo), KEY)
    assert isinstance(old["text"], str) and old["cost"] > 0
    image_file = tmp_path / "image.txt"
    image_file.write_text(data_uri(sample_photo()))
    package = client_dir("runware-sdk", "1.8.0")
    for transport, url in (("rest", server.url), ("websocket", server.ws_url)):
        (item,) = run_client(package, RUNWARE_SDK, transport, url, str(image_file), KEY, "Look.")
        assert (item["taskType"], item["status"]) == ("imageCaption", "success"), transport
        assert isinstance(item["text"], str) and item["cost"] > 0


# ---------------------------------------------------------------------------- 3: async


def test_async_polling_webhook_upload_and_resends(server: LiveServer) -> None:
    hook, sink = Receiver([500]), Receiver([])
    try:
        task = caption(
            b64(sample_photo()),
            deliveryMethod="async",
            webhookURL=hook.url("/hook"),
            uploadEndpoint=sink.url("/caption.txt"),
            maxTokens=32,
        )
        ack = post(server, [task], headers=AUTH)
        processing = {
            "taskType": "imageCaption",
            "taskUUID": task["taskUUID"],
            "status": "processing",
        }
        assert (ack.status_code, ack.json()) == (200, {"data": [processing]})
        statuses: list[str] = []

        def succeeded() -> bool:
            statuses.append(poll(server, task["taskUUID"]).json()["data"][0]["status"])
            return statuses[-1] == "success"

        wait_until(succeeded, "the async task to succeed", RESTART_TIMEOUT_S)
        assert set(statuses[:-1]) <= {"processing"}
        result = poll(server, task["taskUUID"]).json()
        wait_until(
            lambda: len(hook.received) == 2 and len(sink.received) == 1, "2 webhooks, 1 upload"
        )
    finally:
        hook.close()
        sink.close()
    assert httpx.Response(200, content=hook.received[1].body).json() == result
    assert sink.received[0].body.decode() == result["data"][0]["text"]
    assert sink.received[0].content_type == "text/plain; charset=utf-8"
    resent = post(server, [task], headers=AUTH)  # same payload: the same, finished result
    assert (resent.status_code, resent.json()) == (200, result)
    changed = post(server, [{**task, "maxTokens": 9}], headers=AUTH)
    assert (changed.status_code, changed.json()["errors"][0]["code"]) == (400, "conflictTaskUUID")


def test_results_expire_to_task_expired(tmp_path: Path, tiny_model_files: ModelFiles) -> None:
    settings = api_settings(tmp_path / "home", n_threads=2)
    clock = FakeClock()
    with live_server(settings, None, install_model(settings, tiny_model_files), clock=clock) as s:
        task = caption(b64(sample_photo()), ttl=60)
        assert post(s, [task]).status_code == 200
        clock.now += 61
        expired = post(s, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}])
    assert (expired.status_code, expired.json()["errors"][0]["code"]) == (404, "taskExpired")


# ---------------------------------------------------------------------------- 5: SIGKILL


def start_serving(home: Path, port: int) -> subprocess.Popen[bytes]:
    """`python -m edgecap serve` in its own process group (so a kill takes its engine too)."""
    env = child_env(EDGECAP_HOME=str(home), EDGECAP_N_THREADS="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecap", "serve", "--port", str(port), "--api-key", KEY],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def healthy() -> bool:
        assert process.poll() is None, "edgecap serve exited"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, "edgecap serve to come up", RESTART_TIMEOUT_S, 0.1)
    return process


def test_sigkill_with_tasks_queued_then_restart_finishes_them(
    tmp_path: Path, tiny_model_files: ModelFiles
) -> None:
    home, port = tmp_path / "home", free_port()
    install_model(Settings(home=home), tiny_model_files)
    url = f"http://127.0.0.1:{port}/v1"
    tasks = [  # no model: the server's default (the only installed one)
        caption(b64(png_bytes(64, 64, (i * 40, 90, 200))), deliveryMethod="async", maxTokens=48)
        for i in range(6)
    ]
    for task in tasks:
        del task["model"]
    polls = [{"taskType": "getResponse", "taskUUID": t["taskUUID"]} for t in tasks]
    process = start_serving(home, port)
    try:
        for task in tasks:
            answer = httpx.post(url, json=[task], headers=AUTH, timeout=60)
            assert answer.json()["data"][0]["status"] == "processing"
        at_kill = httpx.post(url, json=polls, headers=AUTH, timeout=60).json()["data"]
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the server and its engine process
        process.wait(KILL_TIMEOUT_S)
    assert [item["status"] for item in at_kill].count("processing") >= 2  # queued or running
    process = start_serving(home, port)
    try:
        items: list[dict[str, Any]] = []

        def all_succeeded() -> bool:
            items[:] = httpx.post(url, json=polls, headers=AUTH, timeout=60).json()["data"]
            return all(item["status"] == "success" for item in items)

        wait_until(all_succeeded, "every task to finish after the restart", RESTART_TIMEOUT_S, 0.2)
        assert [item["taskUUID"] for item in items] == [t["taskUUID"] for t in tasks]
        assert all(isinstance(item["text"], str) for item in items)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(KILL_TIMEOUT_S)
