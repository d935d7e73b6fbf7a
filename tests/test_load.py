"""Issue 9, load on loopback against a real ``edgecap serve`` on the tiny model: a few hundred
concurrent REST clients and ~50 WebSocket clients, mixed valid and invalid traffic.

Holds: zero 5xx, every 429 carries Retry-After, every accepted task finishes. Prints p50/p99
latency and the server's peak RSS (docs/reliability.md). Kept short for CI; tools/soak.py runs
the same mix for half an hour.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from edgecap.records import ModelFiles
from tests.support.images import b64, png_bytes
from tests.support.server_process import ServerProcess, register

REST_CLIENTS = 240
WS_CLIENTS = 50
FINISH_S = 300.0
IMAGE = b64(png_bytes(64, 48))


def request_mix(index: int) -> list[dict[str, Any]] | bytes:
    """Client ``index``'s request: captions, pings, and several kinds of invalid request."""
    kind = index % 6
    if kind in (0, 1):
        return [
            {
                "taskType": "caption",
                "taskUUID": str(uuid.uuid4()),
                "inputs": {"image": IMAGE},
                "maxTokens": 2,
                "deliveryMethod": "async",
            }
        ]
    if kind == 2:
        return [{"taskType": "ping", "ping": True}]
    if kind == 3:
        return [{"taskType": "caption", "taskUUID": "not-a-uuid", "inputs": {"image": IMAGE}}]
    if kind == 4:
        return b"[{not json"
    return [{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}]


async def rest_client(client: httpx.AsyncClient, url: str, index: int, out: dict[str, Any]) -> None:
    body = request_mix(index)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    started = time.perf_counter()
    answer = await client.post(url, content=content, headers={"Content-Type": "application/json"})
    out["latency"].append(time.perf_counter() - started)
    out["statuses"][answer.status_code] += 1
    if answer.status_code == 429:
        out["429_without_retry_after"] += "retry-after" not in answer.headers
    if answer.status_code == 200 and isinstance(body, list) and body[0]["taskType"] == "caption":
        out["accepted"].append(body[0]["taskUUID"])


async def ws_client(url: str, index: int, out: dict[str, Any]) -> None:
    task = {
        "taskType": "caption",
        "taskUUID": str(uuid.uuid4()),
        "inputs": {"image": IMAGE},
        "maxTokens": 2,
        "deliveryMethod": "async" if index % 2 else "sync",
    }
    invalid = {"taskType": "caption", "taskUUID": "nope", "inputs": {"image": IMAGE}}
    started = time.perf_counter()
    async with websockets.connect(url, open_timeout=60) as sock:
        await sock.send(json.dumps([{"taskType": "ping", "ping": True}, task, invalid]))
        for _ in range(3):
            frame = json.loads(await asyncio.wait_for(sock.recv(), FINISH_S))
            for error in frame.get("errors", []):
                out["ws_codes"][error["code"]] += 1
                if (
                    error.get("taskUUID") == task["taskUUID"]
                    and error["code"] != "rateLimitExceeded"
                ):
                    out["ws_failed"] += 1
            for item in frame.get("data", []):
                if item.get("taskUUID") == task["taskUUID"]:
                    out["accepted"].append(task["taskUUID"])
    out["ws_latency"].append(time.perf_counter() - started)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_files: ModelFiles
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("load-home")
    register(home, tiny_model_files)
    env = {"EDGECAP_N_THREADS": "2", "EDGECAP_QUEUE_SIZE": "64", "EDGECAP_SYNC_TIMEOUT_S": "600"}
    process = ServerProcess(home, env).start()
    try:
        yield process
    finally:
        process.stop()
        print(f"\nserver log (tail):\n{process.log()[-1500:]}")


def test_mixed_load_gives_no_5xx_and_every_accepted_task_finishes(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    out: dict[str, Any] = {
        "latency": [],
        "ws_latency": [],
        "statuses": Counter(),
        "ws_codes": Counter(),
        "accepted": [],
        "429_without_retry_after": 0,
        "ws_failed": 0,
    }

    async def run() -> None:
        limits = httpx.Limits(max_connections=REST_CLIENTS, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=FINISH_S, limits=limits) as client:
            await asyncio.gather(
                *(rest_client(client, server.url, i, out) for i in range(REST_CLIENTS)),
                *(ws_client(server.ws_url, i, out) for i in range(WS_CLIENTS)),
            )

    started = time.monotonic()
    asyncio.run(run())
    statuses = out["statuses"]
    assert not [s for s in statuses if s >= 500], statuses
    assert out["429_without_retry_after"] == 0
    assert out["ws_failed"] == 0, out["ws_codes"]
    pending = set(out["accepted"])
    deadline = time.monotonic() + FINISH_S
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} accepted tasks never finished"
        for task_uuid in list(pending):
            answer = httpx.post(
                server.url, json=[{"taskType": "getResponse", "taskUUID": task_uuid}], timeout=60
            ).json()
            if "errors" in answer:
                raise AssertionError(f"an accepted task failed: {answer}")
            if answer["data"][0].get("status") == "success":
                pending.discard(task_uuid)
        time.sleep(0.5)
    latency = sorted(out["latency"])
    p50, p99 = statistics.median(latency), latency[int(len(latency) * 0.99) - 1]
    with capsys.disabled():
        print(
            f"\nload: {REST_CLIENTS} REST + {WS_CLIENTS} WS clients, statuses {dict(statuses)}, "
            f"ws errors {dict(out['ws_codes'])}, {len(out['accepted'])} tasks accepted and "
            f"finished in {time.monotonic() - started:.1f} s; REST p50 {p50 * 1000:.0f} ms "
            f"p99 {p99 * 1000:.0f} ms; server peak RSS {server.peak_rss_mb():.0f} MB"
        )
