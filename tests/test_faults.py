"""Issue 9, faults against a real ``edgecap serve`` process on the tiny model:

- the engine process SIGKILLed mid-caption: the task is retried and succeeds once;
- the whole server SIGKILLed with 20 async tasks acknowledged, then restarted: every task
  completes exactly once from the client's view, and every webhook arrives at least once,
  always with the same delivery id;
- SIGTERM: the server drains and exits within a bound.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecap.records import ModelFiles
from tests.support.http import Receiver
from tests.support.images import b64, png_bytes
from tests.support.server_process import ServerProcess, register

WAIT_S = 600.0  # generous: the CI box is small and shared
DRAIN_BOUND_S = 30.0  # SIGTERM to exit (uvicorn's 5 s grace + stopping the engine)
IMAGE = b64(png_bytes(64, 48))


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def post(server: ServerProcess, body: Any) -> httpx.Response:
    return httpx.post(server.url, json=body, timeout=60)


def result_of(server: ServerProcess, task_uuid: str) -> dict[str, Any]:
    return post(server, [{"taskType": "getResponse", "taskUUID": task_uuid}]).json()


def finished(answer: dict[str, Any]) -> bool:
    return "errors" in answer or answer["data"][0].get("status") == "success"


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


@pytest.fixture
def home(tmp_path: Path, tiny_model_files: ModelFiles) -> Path:
    register(tmp_path / "home", tiny_model_files)
    return tmp_path / "home"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver([])
    yield hook
    hook.close()


def server_env(**extra: str) -> dict[str, str]:
    return {
        "EDGECAP_N_THREADS": "2",
        "EDGECAP_DELIVERY_ALLOWLIST": '["127.0.0.1"]',
        "EDGECAP_QUEUE_SIZE": "100",
        **extra,
    }


def test_the_engine_killed_mid_caption_is_retried_and_succeeds_once(home: Path) -> None:
    server = ServerProcess(home, server_env()).start()
    try:
        task = {
            "taskType": "caption",
            "taskUUID": str(uuid.uuid4()),
            "inputs": {"image": IMAGE},
            "maxTokens": 400,  # long enough to be killed in the middle of it
            "deliveryMethod": "async",
        }
        assert post(server, [task]).status_code == 200
        assert server.process is not None
        engines = children_of(server.process.pid)
        assert engines, "no engine process"
        time.sleep(0.5)  # let it start generating
        assert result_of(server, task["taskUUID"])["data"][0]["status"] == "processing"
        for pid in engines:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: finished(result_of(server, task["taskUUID"])), "the retried task")
        answer = result_of(server, task["taskUUID"])
        assert answer["data"][0]["status"] == "success", answer
        again = post(server, [task]).json()  # resent: the same single result
        assert again == answer
    finally:
        server.stop()


def test_a_killed_server_finishes_every_acknowledged_task_exactly_once(
    home: Path, receiver: Receiver
) -> None:
    server = ServerProcess(home, server_env()).start()
    tasks = [
        {
            "taskType": "caption",
            "taskUUID": str(uuid.uuid4()),
            "inputs": {"image": IMAGE},
            "maxTokens": 40,
            "deliveryMethod": "async",
            "webhookURL": receiver.url("/hook"),
        }
        for _ in range(20)
    ]
    try:
        for task in tasks:
            assert post(server, [task]).status_code == 200  # acknowledged: durable
        server.kill()
        server.process = None
        restarted = ServerProcess(home, server_env(), port=server.port).start()
        try:
            for task in tasks:
                wait_until(lambda t=task: finished(result_of(restarted, t["taskUUID"])), "a task")
            results = {t["taskUUID"]: result_of(restarted, t["taskUUID"]) for t in tasks}
            for task in tasks:
                assert results[task["taskUUID"]]["data"][0]["status"] == "success"
                assert post(restarted, [task]).json() == results[task["taskUUID"]]
            wait_until(lambda: len({_task_of(r) for r in receiver.received}) == 20, "webhooks")
        finally:
            restarted.stop()
    finally:
        server.stop()
    ids: dict[str, set[str]] = defaultdict(set)
    for hit in receiver.received:
        ids[_task_of(hit)].add(hit.headers["X-Edgecap-Delivery"])
    assert set(ids) == {t["taskUUID"] for t in tasks}
    assert all(len(delivery_ids) == 1 for delivery_ids in ids.values())


def _task_of(hit: Any) -> str:
    body = json.loads(hit.body)
    item = (body.get("data") or body.get("errors"))[0]
    return str(item["taskUUID"])


def test_sigterm_drains_within_a_bound(home: Path) -> None:
    server = ServerProcess(home, server_env()).start()
    task = {
        "taskType": "caption",
        "taskUUID": str(uuid.uuid4()),
        "inputs": {"image": IMAGE},
        "maxTokens": 400,
        "deliveryMethod": "async",
    }
    assert post(server, [task]).status_code == 200
    took = server.terminate(timeout_s=DRAIN_BOUND_S)  # raises if it does not exit in time
    assert server.process is not None and server.process.returncode is not None
    print(f"\nSIGTERM to exit: {took:.2f} s")
    restarted = ServerProcess(home, server_env(), port=server.port).start()
    try:  # the interrupted task runs again after the restart
        wait_until(lambda: finished(result_of(restarted, task["taskUUID"])), "the task")
        assert result_of(restarted, task["taskUUID"])["data"][0]["status"] == "success"
    finally:
        restarted.stop()
