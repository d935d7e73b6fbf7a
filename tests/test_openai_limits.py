"""The OpenAI-compatible endpoint's wire format, refusals and limits, on a live server with the
scripted engine (fast): SSE framing, error shapes and statuses, every bound exceeded once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgecap.server.openai.schema import MAX_MESSAGES
from tests.support.api import LiveServer, api_settings, install_model, live_server, new_uuid, post
from tests.support.engines import ScriptedEngineFactory
from tests.support.images import b64, data_uri, png_bytes
from tests.support.waiting import wait_until

KEY = "limits-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("home")
    settings = api_settings(home, api_keys=[KEY], max_body_bytes=BODY_LIMIT)
    factory = ScriptedEngineFactory(tmp_path_factory.mktemp("engine") / "calls.log")
    with live_server(settings, factory, install_model(settings)) as server:
        server.wait_ready()
        yield server


def chat(server: LiveServer, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}/chat/completions",
        content=content,
        headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)},
        timeout=60,
    )


def request(prompt: str = "hello", **fields: Any) -> dict[str, Any]:
    return {"model": "runware:152@2", "messages": [{"role": "user", "content": prompt}], **fields}


def error_of(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return dict(body["error"])


def sse_data(answer: httpx.Response) -> list[str]:
    """The data fields of the event stream, in order (events are blank-line separated)."""
    events = [e for e in answer.text.split("\n\n") if e]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), answer.text
    return [e[len("data: ") :] for e in events]


def test_a_completion_has_openais_shape(server: LiveServer) -> None:
    answer = chat(server, request("a b", user="someone", store=False, n=1, seed=-5))
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "chat.completion" and body["model"] == "runware:152@2"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "default saw a b", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_a_stream_is_sse_chunks_ending_with_done(server: LiveServer) -> None:
    answer = chat(server, request("x y", stream=True, stream_options={"include_usage": True}))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    data = sse_data(answer)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # The scripted engine only captions (no pieces): its text comes as one content chunk.
    # (Piece by piece on the real engine: test_openai_client.py.)
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert contents == ["default saw x y"]
    assert chunks[-2]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"
    }  # fmt: skip
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_an_engine_error_is_the_error_shape_with_its_status(server: LiveServer) -> None:
    for stream in (False, True):  # before the first piece: a plain HTTP error, streamed or not
        error = error_of(chat(server, request("invalid", stream=stream)), 400)
        assert error == {
            "message": "too big",
            "type": "invalid_request_error",
            "param": "maxPixels",
            "code": "invalidParameter",
            "max": 9,
        }


def test_keys_are_checked_before_anything_else(server: LiveServer) -> None:
    error = error_of(chat(server, b"not json", headers={"Authorization": "Bearer nope"}), 401)
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    error = error_of(chat(server, request(), headers={}), 401)
    assert error["code"] == "missingApiKey"
    listing = httpx.get(f"{server.url}/models", timeout=10)
    assert error_of(listing, 401)["code"] == "missingApiKey"


def test_models_lists_what_requests_may_name(server: LiveServer) -> None:
    answer = httpx.get(f"{server.url}/models", headers=AUTH, timeout=10)
    ids = [m["id"] for m in answer.json()["data"]]
    assert {"edgecap-tiny-random", "runware:152@2"} <= set(ids)
    one = httpx.get(f"{server.url}/models/runware:152@2", headers=AUTH, timeout=10)
    assert one.json() == {"id": "runware:152@2", "object": "model", "created": 0,
                          "owned_by": "edgecap"}  # fmt: skip
    missing = httpx.get(f"{server.url}/models/gpt-4o", headers=AUTH, timeout=10)
    assert error_of(missing, 404)["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"n": 2}, 400, "unsupportedParameter", "n"),
        ({"tools": [{"type": "function"}]}, 400, "unsupportedParameter", "tools"),
        ({"logprobs": True}, 400, "unsupportedParameter", "logprobs"),
        ({"presence_penalty": 0.5}, 400, "unsupportedParameter", "presence_penalty"),
        ({"functions": []}, 400, "unsupportedParameter", "functions"),
        ({"model": "gpt-4o"}, 404, "model_not_found", "model"),
        ({"max_tokens": 8193}, 400, "invalidParameter", "max_tokens"),
        ({"temperature": 3}, 400, "invalidParameter", "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "invalidParameter", "stop"),
        ({"messages": []}, 400, "invalidParameter", "messages"),
        (
            {"messages": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)},
            400,
            "invalidParameter",
            "messages",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "invalidParameter", None),
        (
            {"response_format": {"type": "json_object"}, "stop": ["}"]},
            400,
            "unsupportedParameter",
            "stop",
        ),
    ],
)
def test_refusals(
    server: LiveServer, fields: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    error = error_of(chat(server, request(**fields)), status)
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


def test_content_part_refusals_name_the_part(server: LiveServer) -> None:
    two_images = [
        {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}},
        {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}},
    ]
    cases = [
        ([{"type": "input_audio", "input_audio": {}}], "unsupportedParameter",
         "messages[0].content[0]"),
        ([{"type": "image_url", "image_url": {"url": ""}}], "invalidParameter",
         "messages[0].content[0].image_url.url"),
        (two_images, "unsupportedParameter", "messages"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
         "invalidInputImage", "messages[0].content"),
        ([{"type": "image_url", "image_url": {"url": new_uuid()}}], "mediaNotFound",
         "messages[0].content"),
    ]  # fmt: skip
    for content, code, param in cases:
        body = {"model": "runware:152@2", "messages": [{"role": "user", "content": content}]}
        answer = chat(server, body)
        error = error_of(answer, 404 if code == "mediaNotFound" else 400)
        assert (error["code"], error["param"]) == (code, param), error


def test_a_body_over_max_body_bytes_is_413(server: LiveServer) -> None:
    big = data_uri(b64(b"x" * BODY_LIMIT).encode())
    body = {"model": "runware:152@2", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": big}}]}]}  # fmt: skip
    error = error_of(chat(server, body), 413)
    assert (error["type"], error["param"]) == ("invalid_request_error", "body")
    error = error_of(chat(server, b"{not json"), 400)
    assert error["param"] == "body" and "not valid JSON" in error["message"]


def test_an_uploaded_image_is_used_by_its_uuid(server: LiveServer) -> None:
    uploaded = post(
        server, [{"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(png_bytes())}],
        headers=AUTH,
    ).json()["data"][0]["imageUUID"]  # fmt: skip
    content = [
        {"type": "text", "text": "what is it"},
        {"type": "image_url", "image_url": {"url": uploaded, "detail": "low"}},
    ]
    body = {"model": "runware:152@2", "messages": [{"role": "user", "content": content}]}
    answer = chat(server, body)
    assert answer.json()["choices"][0]["message"]["content"] == "default saw what is it"


# ---------------------------------------------------------------------------- the queue


def test_the_same_queue_and_timeout_as_captions(slow_server: LiveServer) -> None:
    error = error_of(chat(slow_server, request("sleep:1"), headers={}), 504)
    assert (error["type"], error["code"]) == ("server_error", "timeoutProvider")
    wait_until(lambda: slow_server.service.store.counts()["processing"] == 0, "the task to end")
    busy = [
        {"taskType": "caption", "taskUUID": new_uuid(), "inputs": {"image": b64(png_bytes())},
         "prompt": "sleep:2", "deliveryMethod": "async"}
        for _ in range(2)
    ]  # fmt: skip
    assert [post(slow_server, [task]).status_code for task in busy] == [200, 200]
    wait_until(lambda: slow_server.service.queue_depth() == 1, "a task waiting in the queue")
    refused = chat(slow_server, request(), headers={})
    error = error_of(refused, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rateLimitExceeded")
    assert int(refused.headers["Retry-After"]) == error["retryAfter"] >= 1


def test_the_openapi_document_describes_the_request(server: LiveServer) -> None:
    document = httpx.get(f"{server.url.removesuffix('/v1')}/openapi.json", timeout=10).json()
    post_op = document["paths"]["/v1/chat/completions"]["post"]
    schema = post_op["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages", "stream", "response_format"} <= set(schema["properties"])
    assert "$ref" not in json.dumps(schema)  # self-contained
    assert "/v1/models" in document["paths"]
