"""The WebSocket at /v1 against a live server: authentication and sessions, one frame per
result, errors in their own frames with their taskUUID, and results delivered after a
reconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tests.support.api import (
    UUID_V4,
    LiveServer,
    api_settings,
    install_model,
    live_server,
    new_uuid,
)
from tests.support.engines import ScriptedEngineFactory
from tests.support.images import b64, png_bytes

KEY = "ws-key"
FRAME_TIMEOUT_S = 30.0
SCENARIO_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("home")
    settings = api_settings(home, api_keys=[KEY, "other-key"])
    with live_server(
        settings, ScriptedEngineFactory(home / "calls.log"), install_model(settings)
    ) as s:
        s.wait_ready()
        yield s


class Client:
    """A WebSocket connection that sends task arrays and reads JSON frames."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket

    async def send(self, *tasks: Any) -> None:
        await self.socket.send(json.dumps(list(tasks)))

    async def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(
            await asyncio.wait_for(self.socket.recv(), FRAME_TIMEOUT_S)
        )
        return frame

    async def frames(self, count: int) -> list[dict[str, Any]]:
        return [await self.frame() for _ in range(count)]

    async def login(self, key: str = KEY, session: str | None = None) -> str:
        task: dict[str, Any] = {"taskType": "authentication", "apiKey": key}
        if session is not None:
            task["connectionSessionUUID"] = session
        await self.send(task)
        reply = await self.frame()
        item = reply["data"][0]
        assert item["taskType"] == "authentication"
        session_uuid: str = item["connectionSessionUUID"]
        return session_uuid


def run(server: LiveServer, scenario: Any) -> Any:
    """Run ``scenario(client)`` on one connection; the whole scenario has a deadline."""

    async def main() -> Any:
        async with websockets.connect(server.ws_url, max_size=None) as socket:
            return await scenario(Client(socket))

    return asyncio.run(asyncio.wait_for(main(), SCENARIO_TIMEOUT_S))


def caption(prompt: str, **fields: Any) -> dict[str, Any]:
    return {
        "taskType": "imageCaption",
        "taskUUID": new_uuid(),
        "inputImage": b64(png_bytes()),
        "prompt": prompt,
        **fields,
    }


def success(task: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "data": [
            {
                "taskType": "imageCaption",
                "taskUUID": task["taskUUID"],
                "status": "success",
                "text": text,
            }
        ]
    }


def test_authentication_ping_and_a_caption(server: LiveServer) -> None:
    task = caption("Hello.")

    async def scenario(client: Client) -> tuple[str, list[dict[str, Any]]]:
        session = await client.login()
        await client.send({"taskType": "ping", "ping": True})
        pong = await client.frame()
        await client.send(task)
        return session, [pong, await client.frame()]

    session, frames = run(server, scenario)
    assert UUID_V4.fullmatch(session)
    assert frames == [
        {"data": [{"taskType": "ping", "pong": True}]},
        success(task, "default saw Hello."),
    ]


def test_one_frame_per_item_and_errors_in_their_own_frames(server: LiveServer) -> None:
    good = caption("Good.")
    many = {**caption("Each."), "inputImage": None, "inputImages": [b64(png_bytes())] * 2}
    many = {k: v for k, v in many.items() if v is not None}
    bad = caption("Bad.", inputImage="bm90IGFuIGltYWdl")
    invalid = {"taskType": "caption", "taskUUID": "nope", "inputImage": b64(png_bytes())}

    async def scenario(client: Client) -> list[dict[str, Any]]:
        await client.login()
        await client.send(good, many, bad, invalid)
        return await client.frames(5)

    frames = run(server, scenario)
    data = [f for f in frames if "data" in f]
    errors = [f for f in frames if "errors" in f]
    assert all(len(f.get("data", f.get("errors", []))) == 1 and len(f) == 1 for f in frames)
    assert sorted(f["data"][0]["text"] for f in data) == [
        "default saw Each.",
        "default saw Each.",
        "default saw Good.",
    ]
    assert {f["data"][0]["taskUUID"] for f in data} == {good["taskUUID"], many["taskUUID"]}
    assert sorted((e["errors"][0]["code"], e["errors"][0]["taskUUID"]) for e in errors) == sorted(
        [("invalidInputImage", bad["taskUUID"]), ("invalidTaskUUID", "nope")]
    )


def test_tasks_before_authentication_are_refused_then_the_socket_closed_1008(
    server: LiveServer,
) -> None:
    task = caption("Early.")

    async def refused(*tasks: Any) -> tuple[dict[str, Any], int | None]:
        async with websockets.connect(server.ws_url) as socket:
            client = Client(socket)
            await client.send(*tasks)
            frame = await client.frame()
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT_S)
            return frame, socket.close_code

    async def scenario(client: Client) -> dict[str, Any]:
        await client.login()
        await client.send(task)
        return await client.frame()

    early, early_close = asyncio.run(refused(task))
    assert early["errors"][0]["code"] == "missingApiKey"
    assert early["errors"][0]["taskUUID"] == task["taskUUID"]
    assert early_close == 1008
    wrong, wrong_close = asyncio.run(refused({"taskType": "authentication", "apiKey": "wrong"}))
    assert (wrong["errors"][0]["code"], wrong["errors"][0]["taskType"]) == (
        "invalidApiKey",
        "authentication",
    )
    assert wrong_close == 1008
    assert run(server, scenario) == success(task, "default saw Early.")


def test_a_refused_key_after_login_keeps_the_connection(server: LiveServer) -> None:
    async def scenario(client: Client) -> list[dict[str, Any]]:
        await client.login()
        await client.send({"taskType": "authentication", "apiKey": "wrong"})
        wrong = await client.frame()
        await client.send({"taskType": "ping", "ping": True})
        return [wrong, await client.frame()]

    wrong, pong = run(server, scenario)
    assert wrong["errors"][0]["code"] == "invalidApiKey"
    assert pong == {"data": [{"taskType": "ping", "pong": True}]}


def test_at_most_64_tasks_per_message(server: LiveServer) -> None:
    async def scenario(client: Client) -> list[dict[str, Any]]:
        await client.login()
        await client.send(*[{"taskType": "ping", "ping": True}] * 65)
        refused = await client.frame()
        await client.send(*[{"taskType": "ping", "ping": True}] * 64)
        return [refused, *await client.frames(64)]

    refused, *pongs = run(server, scenario)
    error = refused["errors"][0]
    assert (error["code"], error["max"]) == ("invalidParameter", 64)
    assert pongs == [{"data": [{"taskType": "ping", "pong": True}]}] * 64


def test_a_malformed_message_gets_an_error_frame_and_the_connection_goes_on(
    server: LiveServer,
) -> None:
    async def scenario(client: Client) -> list[dict[str, Any]]:
        await client.login()
        await client.socket.send("{not json")
        broken = await client.frame()
        await client.send({"taskType": "ping", "ping": True})
        return [broken, await client.frame()]

    broken, pong = run(server, scenario)
    assert broken["errors"][0]["code"] == "invalidParameter"
    assert pong == {"data": [{"taskType": "ping", "pong": True}]}


def test_async_acknowledgement_then_get_response(server: LiveServer) -> None:
    task = caption("sleep:0.5", deliveryMethod="async")

    async def scenario(client: Client) -> list[dict[str, Any]]:
        await client.login()
        await client.send(task)
        ack = await client.frame()
        polled: dict[str, Any] = {"data": [{"status": "not polled yet"}]}
        while polled["data"][0]["status"] != "success":  # bounded by run()'s deadline
            await asyncio.sleep(0.2)
            await client.send({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
            polled = await client.frame()
        return [ack, polled]

    ack, polled = run(server, scenario)
    assert ack == {
        "data": [{"taskType": "imageCaption", "taskUUID": task["taskUUID"], "status": "processing"}]
    }
    assert polled == success(task, "default saw sleep:0.5")


def test_image_upload_over_websocket_answers_an_http_url(server: LiveServer) -> None:
    task = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(png_bytes())}

    async def scenario(client: Client) -> dict[str, Any]:
        await client.login()
        await client.send(task)
        return await client.frame()

    item = run(server, scenario)["data"][0]
    assert item["imageURL"] == f"http://127.0.0.1:{server.port}/v1/images/{item['imageUUID']}"


def test_results_finished_while_away_are_delivered_on_resume(server: LiveServer) -> None:
    task = caption("sleep:1")

    async def away() -> str:
        async with websockets.connect(server.ws_url) as socket:
            client = Client(socket)
            session = await client.login()
            await client.send(task)
            await asyncio.sleep(0.2)  # the task is running when the connection drops
        return session

    async def back(session: str) -> tuple[str, dict[str, Any]]:
        await asyncio.sleep(1.5)  # the task finishes while nobody is connected
        async with websockets.connect(server.ws_url) as socket:
            client = Client(socket)
            resumed = await client.login(session=session)
            return resumed, await client.frame()

    session = asyncio.run(away())
    resumed, frame = asyncio.run(back(session))
    assert resumed == session
    assert frame == success(task, "default saw sleep:1")


def test_another_key_cannot_resume_a_session(server: LiveServer) -> None:
    async def scenario() -> tuple[str, str]:
        async with websockets.connect(server.ws_url) as socket:
            first = await Client(socket).login()
        async with websockets.connect(server.ws_url) as socket:
            second = await Client(socket).login(key="other-key", session=first)
        return first, second

    first, second = asyncio.run(scenario())
    assert first != second
