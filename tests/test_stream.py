"""Streaming and cancellation, from the worker protocol up to ``POST /v1/stream``, and the small
endpoints the web page reads. The engine is test_worker's scripted fake (its ``pieces:<n>``
prompt streams n pieces 20 ms apart and honours cancellation); test_web.py drives the same
endpoints on the real tiny model from a real browser.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecap.cli import build_parser
from edgecap.config import PIXELS_PER_TOKEN
from edgecap.inputs.images import pixel_budget, smart_resize
from edgecap.records import CaptionRequest
from edgecap.runtime.messages import WorkItem
from edgecap.runtime.worker import Worker
from tests.support.api import LiveServer, api_settings, install_model, live_server, new_uuid, post
from tests.support.engines import StreamingEngineFactory
from tests.support.images import data_uri, png_bytes
from tests.support.waiting import wait_until

KEY = "stream-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
DEADLINE_S = 30.0


# ---------------------------------------------------------------------------- the worker


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    worker = Worker(StreamingEngineFactory(tmp_path / "engine.log"))
    worker.start()
    wait_until(lambda: worker.ready, "the engine process to load", DEADLINE_S)
    yield worker
    worker.stop()


def item(prompt: str, task_uuid: str = "t1") -> WorkItem:
    return WorkItem(task_uuid, None, CaptionRequest(image=None, prompt=prompt), stream=True)


def test_the_scheduler_double_streams_and_reports_no_backend(worker: Worker) -> None:
    pieces: list[str] = []
    result = worker.run(item("pieces:3"), pieces.append)
    assert pieces == ["w0", " w1", " w2"] and result.text == "w0 w1 w2"
    # It never loaded llama.cpp, so it has no backend to report (test_web.py checks the real
    # engine's report on the status strip).
    assert worker.info is None


# ---------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = api_settings(
        tmp_path_factory.mktemp("home"), api_keys=[KEY], max_image_megapixels=1.0, parallel=1
    )
    factory = StreamingEngineFactory(tmp_path_factory.mktemp("engine") / "calls.log")
    with live_server(settings, factory, install_model(settings)) as server:
        server.wait_ready()
        yield server


def base(server: LiveServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def stream_task(prompt: str, image: bytes | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "taskType": "caption",
        "taskUUID": new_uuid(),
        "inputs": {"image": data_uri(image or png_bytes())},
        "prompt": prompt,
        **fields,
    }


def events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a server-sent event stream, as they arrive."""
    name = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: ") and name is not None:
            yield name, json.loads(line[len("data: ") :])
            name = None


def open_stream(server: LiveServer, task: dict[str, Any], **headers: str) -> Any:
    return httpx.stream(
        "POST",
        f"{base(server)}/v1/stream",
        json=task,
        headers={**AUTH, **headers},
        timeout=DEADLINE_S,
    )


def status(server: LiveServer) -> dict[str, Any]:
    answer = httpx.get(f"{base(server)}/v1/status", headers=AUTH, timeout=DEADLINE_S)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def wait_idle(server: LiveServer) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while (now := status(server))["queue"] != {"waiting": 0, "running": 0}:
        assert time.monotonic() < deadline, f"the server is still busy: {now}"
        time.sleep(0.05)
    return now


def test_stream_sends_accepted_pieces_then_the_result_with_timings(server: LiveServer) -> None:
    task = stream_task("pieces:6")
    with open_stream(server, task) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        got = list(events(response))
    names = [name for name, _ in got]
    assert names == ["accepted"] + ["piece"] * 6 + ["result"]
    assert got[0][1] == {"taskUUID": task["taskUUID"]}
    result = got[-1][1]
    assert "".join(data["text"] for name, data in got if name == "piece") == result["text"]
    assert result["text"] == "w0 w1 w2 w3 w4 w5"
    assert set(result["timings"]) == {"load_image", "encode", "prefill", "generate"}
    assert (result["finishReason"], result["generatedTokens"]) == ("length", 6)
    # The same task through POST /v1 gets the same text: one task store, one engine.
    poll = post(server, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], headers=AUTH)
    assert poll.json()["data"][0]["text"] == result["text"]


def test_a_client_that_goes_away_cancels_its_task_and_frees_the_engine(
    server: LiveServer,
) -> None:
    task = stream_task("pieces:5000")
    with open_stream(server, task) as response:
        for name, _ in events(response):
            if name == "piece":
                break  # hang up mid-caption
    wait_idle(server)
    poll = post(server, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], headers=AUTH)
    (error,) = poll.json()["errors"]
    assert error["code"] == "taskCancelled"
    assert 1 <= error["generatedTokens"] < 5000
    assert poll.status_code == 409
    # The engine is free: the next caption runs at once.
    assert post(server, [stream_task("hello")], headers=AUTH).json()["data"][0]["text"]


def test_a_queued_task_whose_client_leaves_is_withdrawn(server: LiveServer) -> None:
    first, second = stream_task("pieces:5000"), stream_task("pieces:3")
    with open_stream(server, first) as running:
        running_events = events(running)  # closing this iterator would close the response
        next(e for e in running_events if e[0] == "piece")
        with open_stream(server, second) as queued:
            queued_events = events(queued)
            assert next(queued_events)[0] == "accepted"
            assert status(server)["queue"] == {"waiting": 1, "running": 1}
    wait_idle(server)
    for task in (first, second):
        poll = post(
            server, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], headers=AUTH
        )
        assert poll.json()["errors"][0]["code"] == "taskCancelled"


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (b"not an image at all", "invalidInputImage"),
        (png_bytes(1500, 1000), "invalidInputImage"),  # 1.5 MP; this server allows 1 MP
    ],
)
def test_an_image_the_api_refuses_is_its_json_error_not_a_stream(
    server: LiveServer, image: bytes, code: str
) -> None:
    task = stream_task("hello", image)
    with open_stream(server, task) as response:
        response.read()
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    same = post(server, [{**task, "taskUUID": new_uuid()}], headers=AUTH).json()["errors"][0]
    assert (error["code"], error["message"]) == (code, same["message"])
    assert error["taskUUID"] == task["taskUUID"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"Authorization": ""}, None, 401, "missingApiKey"),
        ({"Authorization": "Bearer wrong"}, None, 401, "invalidApiKey"),
        ({}, b"[1, 2]", 400, "invalidParameter"),
        ({}, b"{not json", 400, "invalidParameter"),
    ],
)
def test_stream_refuses_bad_requests_with_the_api_error(
    server: LiveServer, headers: dict[str, str], body: bytes | None, status: int, code: str
) -> None:
    content = body if body is not None else json.dumps(stream_task("hello")).encode()
    answer = httpx.post(
        f"{base(server)}/v1/stream",
        content=content,
        headers={**AUTH, "Content-Type": "application/json", **headers},
        timeout=DEADLINE_S,
    )
    assert answer.status_code == status
    assert answer.json()["errors"][0]["code"] == code


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"inputs": None, "inputImages": ["aGVsbG8=", "aGVsbG8="]}, "inputImages"),
        ({"maxTokens": 8193}, "maxTokens"),
        ({"unknownField": 1}, "unknownField"),
    ],
)
def test_stream_validates_like_post_v1(
    server: LiveServer, fields: dict[str, Any], parameter: str
) -> None:
    task = {k: v for k, v in {**stream_task("hello"), **fields}.items() if v is not None}
    with open_stream(server, task) as response:
        response.read()
    assert response.status_code == 400
    assert response.json()["errors"][0]["parameter"] == parameter


# ---------------------------------------------------------------------------- page endpoints


def test_the_page_is_served_with_a_strict_content_security_policy(server: LiveServer) -> None:
    page = httpx.get(f"{base(server)}/", timeout=DEADLINE_S)
    assert page.status_code == 200 and "<title>edgecap</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "img-src 'self' blob: data:" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = httpx.get(f"{base(server)}/web/{name}", timeout=DEADLINE_S)
        assert asset.headers["content-type"].startswith(kind)
    for name in ("__init__.py", "..%2Fconfig.py"):  # only the listed files are served
        missing = httpx.get(f"{base(server)}/web/{name}", timeout=DEADLINE_S)
        assert missing.status_code == 404
    missing = httpx.get(f"{base(server)}/web/nothing.js", timeout=DEADLINE_S)
    assert missing.json()["errors"][0]["code"] == "mediaNotFound"


def test_defaults_come_from_the_settings(server: LiveServer) -> None:
    body = httpx.get(f"{base(server)}/v1/defaults", timeout=DEADLINE_S).json()
    s = server.settings
    assert body["maxTokens"] == s.max_tokens and body["maxPixels"] == s.max_pixels
    assert body["pixelsPerToken"] == PIXELS_PER_TOKEN and body["keyRequired"] is True
    assert body["kiosk"] == {
        "enabled": False,
        "prompt": s.kiosk_prompt,
        "idleSeconds": s.kiosk_idle_s,
    }


def test_status_names_the_model_backend_and_queue(server: LiveServer) -> None:
    assert httpx.get(f"{base(server)}/v1/status", timeout=DEADLINE_S).status_code == 401
    body = wait_idle(server)
    assert body["model"] == {"id": "edgecap-tiny-random", "randomWeights": True}
    assert body["backend"] is None  # the scripted engine never loads llama.cpp
    assert body["ready"] is True


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"),
    [(4000, 3000, None), (640, 480, 256 * PIXELS_PER_TOKEN), (10, 10, None), (99999, 999, None)],
)
def test_image_tokens_follow_the_servers_resize_rule(
    server: LiveServer, width: int, height: int, max_pixels: int | None
) -> None:
    query: dict[str, int] = {"width": width, "height": height}
    if max_pixels is not None:
        query["maxPixels"] = max_pixels
    answer = httpx.get(f"{base(server)}/v1/image-tokens", params=query, timeout=DEADLINE_S)
    low, high = pixel_budget(server.settings, max_pixels=max_pixels)
    new_h, new_w = smart_resize(height, width, min_pixels=low, max_pixels=high)
    assert answer.json() == {
        "width": new_w,
        "height": new_h,
        "tokens": (new_w // 28) * (new_h // 28),
        "maxPixels": high,
    }


@pytest.mark.parametrize(
    "query",
    [
        "width=0&height=10",
        "width=abc&height=10",
        "height=10",
        "width=10&height=10&maxPixels=-1",
        "width=99999999&height=10",
        "width=10&height=5000",
    ],
)
def test_image_tokens_refuse_bad_sizes_with_the_api_error(server: LiveServer, query: str) -> None:
    answer = httpx.get(f"{base(server)}/v1/image-tokens?{query}", timeout=DEADLINE_S)
    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert error["code"] in {"invalidParameter", "invalidInputImage"} and error["message"]


# ---------------------------------------------------------------------------- serve's kiosk flags


def test_serve_parses_the_kiosk_flags() -> None:
    args = build_parser().parse_args(
        ["serve", "--kiosk", "--kiosk-prompt", "Describe it.", "--kiosk-idle", "5"]
    )
    assert (args.kiosk, args.kiosk_prompt, args.kiosk_idle_s) == (True, "Describe it.", 5.0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kiosk-idle", "0"], "not a number of seconds from 1 to 86400"),
        (["--kiosk-idle", "soon"], "not a number of seconds"),
        (["--kiosk-prompt", ""], "1 to 2000 characters"),
        (["--kiosk-prompt", "x" * 2001], "1 to 2000 characters"),
    ],
)
def test_serve_refuses_bad_kiosk_flags_with_a_message(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
