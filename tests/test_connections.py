"""The request-header deadline (``header_timeout_s``, ``server/connections.py``), with raw sockets
on loopback against the real app served by uvicorn: slowloris clients are cut off with a 408,
ordinary clients (keep-alive, pipelining, slow bodies, WebSockets) are not, and slow connections
stop holding ``max_connections`` once their deadline passes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.support.api import LiveServer, api_settings, scripted_server
from tests.support.waiting import wait_until

HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 8
WAIT_S = 30.0  # every wait's own deadline: far past the server's
TRICKLE_S = 0.2  # one byte this often: each byte arrives well within the deadline
JSON = {"Content-Type": "application/json"}
PING = json.dumps([{"taskType": "ping", "ping": True}]).encode()
UNFINISHED_GET = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
UNFINISHED_HANDSHAKE = (
    b"GET /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Slow: "
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("connections")
    settings = api_settings(
        home, header_timeout_s=HEADER_TIMEOUT_S, max_connections=MAX_CONNECTIONS
    )
    with scripted_server(settings) as live:
        yield live


@pytest.fixture(scope="module")
def quick_body(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("quick-body")
    settings = api_settings(home, body_timeout_s=1.0)
    with scripted_server(settings, ready=False) as live:
        yield live


# ---------------------------------------------------------------- raw-socket helpers


async def trickle(port: int, start: bytes = b"", head: bytes = UNFINISHED_GET) -> bytes:
    """Send ``start`` at once, then ``head`` and ever more header bytes one at a time, until
    the server closes the connection; everything the server sent. Fails after WAIT_S."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = asyncio.ensure_future(_read_all(reader))
    try:
        writer.write(start)
        step = 0
        started = time.monotonic()
        while not received.done():
            assert time.monotonic() - started < WAIT_S, "still open while trickling headers"
            writer.write(head[step : step + 1] or b"a")
            step += 1
            try:
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait([received], timeout=TRICKLE_S)
        return await asyncio.wait_for(received, WAIT_S)
    finally:
        writer.close()


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionError:
        pass  # a reset after the server's answer: what arrived is what it sent
    return data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: its status and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), WAIT_S)
    return int(lines[0].split()[1]), body


def post_head(length: int, path: bytes = b"/v1") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (path, length)
    )


# ---------------------------------------------------------------- slow clients are cut off


@pytest.mark.parametrize(
    "head", [UNFINISHED_GET, UNFINISHED_HANDSHAKE], ids=["request", "websocket-handshake"]
)
def test_headers_trickled_a_byte_at_a_time_get_408_and_the_connection_closed(
    server: LiveServer, head: bytes
) -> None:
    answer = asyncio.run(trickle(server.port, head=head))
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    error = body["errors"][0]
    assert error["code"] == "timeoutProvider" and error["parameter"] == "headers"
    assert "header_timeout_s" in error["message"]


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: LiveServer) -> None:
    async def silent() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            return await asyncio.wait_for(_read_all(reader), WAIT_S)
        finally:
            writer.close()

    try:
        answer = asyncio.run(silent())
    except TimeoutError:
        raise AssertionError(f"a silent connection was still open after {WAIT_S:g} s") from None
    assert answer == b""


def test_on_a_kept_alive_connection_the_deadline_counts_from_the_last_response(
    server: LiveServer,
) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer = asyncio.run(trickle(server.port, start=first))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"HTTP/1.1 408 " in answer, answer  # the second, trickled request


# ---------------------------------------------------------------- ordinary clients are not


def test_keep_alive_and_pipelined_requests_still_work(server: LiveServer) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=WAIT_S) as client:
        statuses = [client.get("/healthz").status_code for _ in range(5)]
        statuses.append(client.post("/v1", content=PING, headers=JSON).status_code)
    assert statuses == [200] * 6

    async def pipelined() -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        curl_like = (
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: curl/8.5.0\r\n"
            b"Accept: */*\r\n\r\n" % server.port
        )
        writer.write(curl_like * 3)
        try:
            return [(await read_response(reader))[0] for _ in range(3)]
        finally:
            writer.close()

    assert asyncio.run(pipelined()) == [200, 200, 200]


@pytest.mark.slow  # seconds of real deadlines: not the unit tier
def test_a_body_slower_than_the_header_deadline_is_still_read(server: LiveServer) -> None:
    """The header clock stops at the headers: a body may take ``body_timeout_s`` (60 s here),
    and the connection then serves the next request."""

    async def slow_body() -> list[tuple[int, bytes]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(post_head(len(PING)))
        for start in range(0, len(PING), 4):
            await asyncio.sleep(3 * HEADER_TIMEOUT_S * 4 / len(PING))
            writer.write(PING[start : start + 4])  # the whole body takes 3 header deadlines
        replies = [await read_response(reader)]
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        replies.append(await read_response(reader))
        writer.close()
        return replies

    (status, body), (next_status, _) = asyncio.run(slow_body())
    assert status == 200 and json.loads(body)["data"][0]["pong"] is True
    assert next_status == 200


@pytest.mark.slow  # seconds of real deadlines: not the unit tier
def test_a_websocket_stays_open_past_the_header_deadline(server: LiveServer) -> None:
    async def idle_then_ping() -> object:
        async with websockets.connect(server.ws_url, compression=None) as socket:
            await asyncio.sleep(3 * HEADER_TIMEOUT_S)
            await socket.send(PING.decode())
            return json.loads(await asyncio.wait_for(socket.recv(), WAIT_S))

    assert asyncio.run(idle_then_ping()) == {"data": [{"taskType": "ping", "pong": True}]}


# ---------------------------------------------------------------- limit_concurrency


def test_slow_connections_filling_max_connections_are_cut_and_normal_requests_get_in(
    server: LiveServer,
) -> None:
    """MAX_CONNECTIONS slowloris connections fill uvicorn's ``limit_concurrency`` (a normal
    request is then 503); once their header deadline passes they are closed and a normal
    request is served. Without the deadline they would hold every slot for as long as they
    trickle."""
    connections = server.server.server_state.connections

    async def scenario() -> tuple[list[bytes], int]:
        slow = [asyncio.ensure_future(trickle(server.port)) for _ in range(MAX_CONNECTIONS)]
        await asyncio.to_thread(
            wait_until, lambda: len(connections) >= MAX_CONNECTIONS, "the slow connections"
        )
        status = await asyncio.to_thread(normal_request_until_served)
        return list(await asyncio.gather(*slow)), status

    def normal_request_until_served() -> int:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            answer = httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=WAIT_S)
            if answer.status_code != 503:  # 503: limit_concurrency, the slots are held
                return answer.status_code
            time.sleep(0.1)
        raise AssertionError(f"every request was 503 for {WAIT_S:g} s")

    answers, status = asyncio.run(scenario())
    assert status == 200
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers


# ---------------------------------------------------------------- body deadline


@pytest.mark.parametrize("path", [b"/v1", b"/v1/stream", b"/v1/chat/completions"])
def test_every_body_reading_route_keeps_body_timeout_s(quick_body: LiveServer, path: bytes) -> None:
    async def stalled_body() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", quick_body.port)
        writer.write(post_head(1000, path) + b'{"taskType": ')  # ...and the rest never comes
        try:
            return await read_response(reader)
        finally:
            writer.close()

    status, body = asyncio.run(stalled_body())
    assert status == 408, body
    assert b"body_timeout_s" in body
