"""Issue 9, the findings about who may do what: each test fails on the code before the fix.

A live server (real uvicorn, real TaskService and SQLite) with the scripted engine of
test_worker, so that nothing here waits for a model. Finding numbers refer to issue 9.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from edgecap.server import ws as ws_module
from tests.support.api import (
    LiveServer,
    api_settings,
    new_uuid,
    post,
    scripted_server,
)
from tests.support.http import Receiver
from tests.support.images import b64, data_uri, png_bytes

KEY_A, KEY_B = "key-of-alice", "key-of-bob"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
IMAGE = b64(png_bytes(32, 32))
WAIT_S = 30.0


def caption(prompt: str = "hello", **fields: Any) -> dict[str, Any]:
    return {
        "taskType": "caption",
        "taskUUID": new_uuid(),
        "inputs": {"image": IMAGE},
        "prompt": prompt,
        **fields,
    }


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("keyed")
    settings = api_settings(
        home,
        api_keys=[KEY_A, KEY_B],
        ws_auth_timeout_s=1.0,
        ws_sessions_per_key=2,
        ws_tasks_per_connection=2,
        upload_quota_bytes_per_key=60_000,
        webhook_secret="hook-secret",
    )
    with scripted_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No keys (the default): the cross-origin rules matter most here."""
    home = tmp_path_factory.mktemp("open")
    settings = api_settings(home, queue_size=2)
    with scripted_server(settings) as server:
        yield server


# ---------------------------------------------------------------- 6: keys separate clients


def test_another_keys_task_is_not_found_and_cannot_be_resent(keyed: LiveServer) -> None:
    task = caption(webhookURL="http://127.0.0.1:9/hook?token=s3cret")
    assert post(keyed, [task], headers=AUTH_A).status_code == 200
    for kind in ("getResponse", "getTaskDetails"):
        other = post(keyed, [{"taskType": kind, "taskUUID": task["taskUUID"]}], headers=AUTH_B)
        assert (other.status_code, other.json()["errors"][0]["code"]) == (404, "taskNotFound")
    resent = post(keyed, [task], headers=AUTH_B)  # not Alice's result, not run again
    assert resent.json()["errors"][0]["code"] == "conflictTaskUUID"
    mine = post(
        keyed, [{"taskType": "getTaskDetails", "taskUUID": task["taskUUID"]}], headers=AUTH_A
    )
    assert mine.status_code == 200
    shown = json.dumps(mine.json())
    assert "s3cret" not in shown and "127.0.0.1:9/hook?<redacted>" in shown


def test_images_and_metrics_need_a_key_and_images_belong_to_theirs(keyed: LiveServer) -> None:
    uploaded = post(
        keyed,
        [{"taskType": "imageUpload", "taskUUID": new_uuid(), "image": data_uri(png_bytes())}],
        headers=AUTH_A,
    ).json()["data"][0]
    url = uploaded["imageURL"]
    assert httpx.get(url, timeout=WAIT_S).status_code == 401
    assert httpx.get(url, headers=AUTH_B, timeout=WAIT_S).status_code == 404
    served = httpx.get(url, headers=AUTH_A, timeout=WAIT_S)
    assert served.status_code == 200
    assert served.headers["x-content-type-options"] == "nosniff"
    metrics = f"http://127.0.0.1:{keyed.port}/metrics"
    assert httpx.get(metrics, timeout=WAIT_S).status_code == 401
    assert httpx.get(metrics, headers=AUTH_A, timeout=WAIT_S).status_code == 200
    by_b = post(keyed, [caption(inputs={"image": uploaded["imageUUID"]})], headers=AUTH_B)
    assert by_b.json()["errors"][0]["code"] == "mediaNotFound"


# ---------------------------------------------------------------- 7: uploads


def test_uploads_are_re_encoded_and_quota_bound(keyed: LiveServer) -> None:
    payload = b"<html><script>alert(1)</script></html>" * 20
    polyglot = png_bytes(40, 30) + payload  # a PNG with a web page after its end
    answer = post(
        keyed,
        [{"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(polyglot)}],
        headers=AUTH_B,
    )
    stored = httpx.get(answer.json()["data"][0]["imageURL"], headers=AUTH_B, timeout=WAIT_S)
    assert b"<script>" not in stored.content
    assert Image.open(io.BytesIO(stored.content)).size == (40, 30)
    noise = Image.frombytes("RGB", (120, 120), random.Random(9).randbytes(120 * 120 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    task = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(buffer.getvalue())}
    statuses = [post(keyed, [dict(task, taskUUID=new_uuid())], headers=AUTH_B) for _ in range(3)]
    refused = [r for r in statuses if r.status_code != 200]
    assert refused, "the per-key quota never refused an upload"
    assert refused[0].status_code == 429 and "Retry-After" in refused[0].headers
    assert "upload quota" in refused[0].json()["errors"][0]["message"]


# ---------------------------------------------------------------- 3: auth before the body


def test_a_request_without_a_key_is_refused_before_its_body_arrives(keyed: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=WAIT_S) as sock:
        sock.sendall(
            b"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000000\r\n\r\n[{"taskType": "caption", '
        )  # ...and the rest never comes
        answer = b""
        while b"}]}" not in answer:  # the whole error envelope
            chunk = sock.recv(65536)
            assert chunk, f"closed early: {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"missingApiKey" in answer


def test_an_authentication_task_first_in_the_body_still_works(keyed: LiveServer) -> None:
    auth = {"taskType": "authentication", "apiKey": KEY_A}
    answer = post(keyed, [auth, {"taskType": "ping", "ping": True}], headers={})
    assert answer.status_code == 200 and answer.json()["data"][0]["pong"] is True


def test_an_unauthenticated_websocket_is_closed_when_idle_or_oversized(keyed: LiveServer) -> None:
    async def scenario() -> tuple[int | None, int | None, str]:
        async with websockets.connect(keyed.ws_url, compression=None) as idle:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(idle.recv(), WAIT_S)
            idle_code = idle.close_code
        async with websockets.connect(keyed.ws_url, compression=None) as big:
            await big.send(json.dumps([caption(prompt="x" * 10_000)]))
            frame = await asyncio.wait_for(big.recv(), WAIT_S)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(big.recv(), WAIT_S)
            return idle_code, big.close_code, str(frame)

    idle_code, big_code, frame = asyncio.run(scenario())
    assert idle_code == 1008 and big_code == 1008
    assert "missingApiKey" in frame


def test_websocket_compression_is_not_negotiated(keyed: LiveServer) -> None:
    async def extensions() -> str | None:
        async with websockets.connect(keyed.ws_url) as socket_:  # offers permessage-deflate
            return socket_.response.headers.get("Sec-WebSocket-Extensions")

    assert asyncio.run(extensions()) is None


# ---------------------------------------------------------------- 11: WebSocket state


def test_sessions_per_key_and_tasks_per_connection_are_bounded(
    keyed: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_module, "TASK_WAIT_S", 0.2)
    auth = {"taskType": "authentication", "apiKey": KEY_B}

    async def scenario() -> tuple[list[str], list[dict[str, Any]]]:
        sockets = [await websockets.connect(keyed.ws_url) for _ in range(3)]
        codes = []
        for sock in sockets:
            await sock.send(json.dumps([auth]))
            frame = json.loads(await asyncio.wait_for(sock.recv(), WAIT_S))
            codes.append(frame["errors"][0]["code"] if "errors" in frame else "ok")
        busy = sockets[0]
        await busy.send(json.dumps([caption(prompt="sleep:3") for _ in range(3)]))
        first = json.loads(await asyncio.wait_for(busy.recv(), WAIT_S))
        for sock in sockets:
            await sock.close()
        return codes, [first]

    codes, frames = asyncio.run(scenario())
    assert codes == ["ok", "ok", "rateLimitExceeded"]
    assert frames[0]["errors"][0]["code"] == "rateLimitExceeded"
    assert "ws_tasks_per_connection" in frames[0]["errors"][0]["message"]


# ---------------------------------------------------------------- 10: cross-origin


def test_cross_origin_browsers_forms_and_foreign_hosts_are_refused(open_server: LiveServer) -> None:
    body = json.dumps([{"taskType": "ping", "ping": True}]).encode()
    url, own = open_server.url, f"http://127.0.0.1:{open_server.port}"

    def send(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=body, headers=headers, timeout=WAIT_S)

    json_type = {"Content-Type": "application/json"}
    assert send(json_type).status_code == 200  # curl, the SDKs: no Origin
    assert send({**json_type, "Origin": own}).status_code == 200  # the server's own page
    evil = send({**json_type, "Origin": "http://evil.example"})
    assert (evil.status_code, evil.json()["errors"][0]["parameter"]) == (403, "Origin")
    form = send({"Content-Type": "text/plain"})
    assert (form.status_code, form.json()["errors"][0]["parameter"]) == (415, "Content-Type")
    rebound = send({**json_type, "Host": f"evil.example:{open_server.port}"})
    assert (rebound.status_code, rebound.json()["errors"][0]["parameter"]) == (421, "Host")
    assert send({**json_type, "Host": f"localhost:{open_server.port}"}).status_code == 200
    assert "nosniff" in send(json_type).headers["x-content-type-options"]

    async def handshake(origin: str) -> str:
        try:
            async with websockets.connect(open_server.ws_url, origin=origin) as sock:  # type: ignore[arg-type]
                await sock.send(json.dumps({"taskType": "ping", "ping": True}))
                return str(json.loads(await asyncio.wait_for(sock.recv(), WAIT_S)))
        except websockets.InvalidStatus as exc:
            return f"refused {exc.response.status_code}"

    assert asyncio.run(handshake("http://evil.example")) == "refused 403"
    assert "pong" in asyncio.run(handshake(own))


# ---------------------------------------------------------------- 12: smaller points


def test_a_multi_image_task_is_refused_whole_when_the_queue_lacks_room(
    open_server: LiveServer,
) -> None:
    task = caption(inputs=None, inputImages=[IMAGE, IMAGE, IMAGE])
    del task["inputs"]
    answer = post(open_server, [task])
    assert answer.status_code == 429 and "Retry-After" in answer.headers
    assert open_server.service.queue_depth() == 0  # nothing of it was queued
    missing = post(open_server, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}])
    assert missing.status_code == 404


@pytest.mark.slow  # seconds of real deadlines and process kills: not the unit tier
def test_webhooks_carry_a_stable_delivery_id_and_an_hmac_signature(keyed: LiveServer) -> None:
    receiver = Receiver([500, 200])  # the first attempt fails: the retry has the same id
    try:
        task = caption(webhookURL=receiver.url("/hook"), deliveryMethod="async")
        assert post(keyed, [task], headers=AUTH_A).status_code == 200
        deadline = time.monotonic() + WAIT_S
        while len(receiver.received) < 2:
            assert time.monotonic() < deadline, "the webhook was not retried"
            time.sleep(0.05)
        hits = receiver.received
    finally:
        receiver.close()
    ids = {hit.headers["X-Edgecap-Delivery"] for hit in hits}
    assert len(ids) == 1
    expected = hmac.new(b"hook-secret", hits[-1].body, hashlib.sha256).hexdigest()
    assert hits[-1].headers["X-Edgecap-Signature"] == f"sha256={expected}"


def test_lone_surrogates_and_infinite_numbers_are_400s(open_server: LiveServer) -> None:
    bodies = {
        "prompt": '[{"taskType":"caption","taskUUID":"%s","inputs":{"image":"%s"},'
        '"prompt":"\\ud800"}]',
        "routing": '[{"taskType":"caption","taskUUID":"%s","inputs":{"image":"%s"},'
        '"routing":{"\\udfff":1}}]',
        "maxTokens": '[{"taskType":"caption","taskUUID":"%s","inputs":{"image":"%s"},'
        '"temperature":1e999}]',
    }
    for name, template in bodies.items():
        body = (template % (new_uuid(), IMAGE)).encode()
        answer = post(open_server, body)
        assert answer.status_code == 400, (name, answer.text)
        assert answer.json()["errors"][0]["code"] == "invalidParameter", name


def test_routing_and_image_urls_are_bounded(open_server: LiveServer) -> None:
    big_routing = post(open_server, [caption(routing={"k": "v" * 5000})])
    assert (big_routing.status_code, big_routing.json()["errors"][0]["parameter"]) == (
        400,
        "routing",
    )
    deep = post(open_server, [caption(routing={"a": [[[[[[[[[[1]]]]]]]]]]})])
    assert deep.json()["errors"][0]["parameter"] == "routing"
    long_url = post(open_server, [caption(inputs={"image": "http://127.0.0.1/" + "a" * 3000})])
    assert long_url.json()["errors"][0]["parameter"] == "inputs.image"
    assert "at most 2048" in long_url.json()["errors"][0]["message"]


def test_a_body_of_many_tiny_objects_is_413_before_it_is_parsed(open_server: LiveServer) -> None:
    body = b"[" + b",".join([b'{"a":[]}'] * 30_000) + b"]"
    answer = post(open_server, body)
    assert (answer.status_code, answer.json()["errors"][0]["parameter"]) == (413, "body")


def test_a_grammar_that_would_unroll_hugely_is_refused(open_server: LiveServer) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 500000}}}
    answer = post(open_server, [caption(jsonSchema=schema)])
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["parameter"] == "jsonSchema"
    nested = {"type": "array", "maxItems": 300, "items": {"type": "string", "maxLength": 300}}
    assert post(open_server, [caption(jsonSchema=nested)]).status_code == 400
    fine = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 200}}}
    assert post(open_server, [caption(jsonSchema=fine)]).status_code == 200


def test_without_keys_many_websocket_clients_each_get_a_session(open_server: LiveServer) -> None:
    """Found by the load test: keyless clients share one identity, so the per-key session
    bound must not apply to them (it crashed the 33rd connection's handler)."""

    async def scenario() -> list[str]:
        sockets = [await websockets.connect(open_server.ws_url) for _ in range(40)]
        answers = []
        for sock in sockets:
            await sock.send(json.dumps([{"taskType": "ping", "ping": True}]))
            answers.append(await asyncio.wait_for(sock.recv(), WAIT_S))
        for sock in sockets:
            await sock.close()
        return [str(a) for a in answers]

    assert all("pong" in answer for answer in asyncio.run(scenario()))
