"""Bad requests, table-driven, against a live server on the tiny model: each gets the contract's
error code and HTTP status (never a 5xx), every error names its task, and a good request still
works after each."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from edgecap.records import ModelFiles
from tests.support.api import LiveServer, api_settings, install_model, live_server, new_uuid, post
from tests.support.http import Receiver
from tests.support.images import b64, data_uri, png_bytes

KEY = "the-good-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = 256 * 1024
UUID = "7d5b0c4e-2a51-4c8e-9b0e-0d2f3c4b5a69"  # fixed, so that the table reads literally
UNKNOWN = "0f1e2d3c-4b5a-4968-8776-655443322110"  # never sent as a task
IMAGE = b64(png_bytes(32, 32))


@dataclass(frozen=True)
class Case:
    body: Any  # a task, a list, or raw bytes
    status: int
    code: str
    parameter: str | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    extra: dict[str, Any] = field(default_factory=dict)  # expected extra error fields
    names_tasks: bool = True  # False: refused before the body was read


def caption(**fields: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "taskType": "caption",
        "taskUUID": UUID,
        "inputs": {"image": IMAGE},
        "maxTokens": 4,  # the tiny model's captions are noise: keep them short
    }
    task.update(fields)
    return {k: v for k, v in task.items() if v is not None}


def nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels - 1):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def with_image(image: Any) -> dict[str, Any]:
    return caption(inputs={"image": image})


def big_png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return b64(buffer.getvalue())


CASES: dict[str, Case] = {
    # -- the body
    "malformed JSON": Case(b"[{nope", 400, "invalidParameter", "body"),
    "not UTF-8": Case(b"\xff\xfe[]", 400, "invalidParameter", "body"),
    "empty body": Case(b"", 400, "invalidParameter", "body"),
    "NaN is not JSON": Case(b'[{"taskType": "ping", "x": NaN}]', 400, "invalidParameter", "body"),
    "nested too deep": Case(b"[" * 100_000, 413, "invalidParameter", "body"),  # containers
    "nested past 512 levels": Case(b"[" * 600 + b"]" * 600, 400, "invalidParameter"),
    "a JSON string": Case(b'"caption"', 400, "invalidParameter", "body"),
    "a JSON number": Case(b"42", 400, "invalidParameter", "body"),
    "null": Case(b"null", 400, "invalidParameter", "body"),
    "an empty array": Case([], 400, "invalidParameter", "body"),
    "an element that is a number": Case([1], 400, "invalidParameter", "task"),
    "an element that is a list": Case([[caption()]], 400, "invalidParameter", "task"),
    "over the body limit": Case(b" " * (BODY_LIMIT + 1), 413, "invalidParameter", "body"),
    "more than 64 tasks": Case(
        [{"taskType": "ping", "ping": True}] * 65,
        400,
        "invalidParameter",
        "body",
        extra={"max": 64},
    ),
    # -- task types and UUIDs
    "no taskType": Case({"taskUUID": UUID}, 400, "invalidParameter", "taskType"),
    "taskType not a string": Case({"taskType": 7}, 400, "invalidParameter", "taskType"),
    "unknown taskType": Case(
        {"taskType": "imageInference", "taskUUID": UUID}, 400, "unsupportedTaskType", "taskType"
    ),
    "authentication not first": Case(
        [caption(taskUUID=new_uuid()), {"taskType": "authentication", "apiKey": KEY}],
        200,  # the caption runs; the misplaced authentication is the error
        "invalidParameter",
        "taskType",
    ),
    "no taskUUID": Case(caption(taskUUID=None), 400, "invalidTaskUUID", "taskUUID"),
    "taskUUID not a UUID": Case(caption(taskUUID="task-1"), 400, "invalidTaskUUID", "taskUUID"),
    "taskUUID a UUID v1": Case(
        caption(taskUUID="6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
        400,
        "invalidTaskUUID",
        "taskUUID",
    ),
    "taskUUID a number": Case(caption(taskUUID=12), 400, "invalidTaskUUID", "taskUUID"),
    "getResponse with a bad UUID": Case(
        {"taskType": "getResponse", "taskUUID": "x"}, 400, "invalidTaskUUID", "taskUUID"
    ),
    "getResponse of an unknown task": Case(
        {"taskType": "getResponse", "taskUUID": UNKNOWN}, 404, "taskNotFound", "taskUUID"
    ),
    "getTaskDetails of an unknown task": Case(
        {"taskType": "getTaskDetails", "taskUUID": UNKNOWN}, 404, "taskNotFound", "taskUUID"
    ),
    # -- images
    "no image": Case(caption(inputs=None), 400, "missingInputImage", "inputs.image"),
    "two image sources": Case(caption(inputImage=IMAGE), 400, "missingInputImage", "inputs.image"),
    "inputs not an object": Case(caption(inputs=IMAGE), 400, "invalidInputImage", "inputs"),
    "inputs.image a number": Case(with_image(3), 400, "invalidInputImage", "inputs.image"),
    "inputs.image empty": Case(with_image(""), 400, "invalidInputImage", "inputs.image"),
    "inputs with another field": Case(
        caption(inputs={"image": IMAGE, "mask": IMAGE}),
        400,
        "unsupportedParameter",
        "inputs.mask",
    ),
    "inputImages empty": Case(
        caption(inputs=None, inputImages=[]), 400, "invalidInputImage", "inputImages"
    ),
    "inputImages too many": Case(
        caption(inputs=None, inputImages=[IMAGE] * 9),
        400,
        "invalidInputImage",
        "inputImages",
        extra={"min": 1, "max": 8},
    ),
    "base64 of text": Case(with_image(b64(b"not an image")), 400, "invalidInputImage"),
    "not base64": Case(with_image("!!!!"), 400, "invalidInputImage", "inputs.image"),
    "data URI not base64": Case(
        with_image("data:image/png,abc"), 400, "invalidInputImage", "inputs.image"
    ),
    "truncated PNG": Case(
        with_image(b64(png_bytes(64, 64)[:60])), 400, "invalidInputImage", "inputs.image"
    ),
    "a server file path": Case(with_image("/etc/hostname"), 400, "invalidInputImage"),
    "stdin": Case(with_image("-"), 400, "invalidInputImage", "inputs.image"),
    "over the megapixel limit": Case(
        with_image(big_png(1200, 1000)), 400, "invalidInputImage", "inputs.image"
    ),
    "an unknown upload": Case(
        caption(inputs=None, inputImage=new_uuid()), 404, "mediaNotFound", "inputImage"
    ),
    "a private address": Case(
        with_image("http://10.1.2.3/cat.png"), 400, "downloadFailed", "inputs.image"
    ),
    "cloud metadata": Case(
        with_image("http://169.254.169.254/latest/meta-data"),
        400,
        "downloadFailed",
        "inputs.image",
    ),
    "a file URL": Case(with_image("file:///etc/passwd"), 400, "downloadFailed", "inputs.image"),
    "a closed port": Case(
        with_image("http://127.0.0.1:1/cat.png"), 400, "downloadFailed", "inputs.image"
    ),
    "imageUpload without image": Case(
        {"taskType": "imageUpload", "taskUUID": UUID}, 400, "missingInputImage", "image"
    ),
    "imageUpload of text": Case(
        {"taskType": "imageUpload", "taskUUID": UUID, "image": data_uri(b"hello")},
        400,
        "invalidInputImage",
    ),
    # -- prompts
    "prompt a number": Case(caption(prompt=5), 400, "invalidPrompt", "prompt"),
    "prompt empty": Case(caption(prompt=""), 400, "invalidPrompt", "prompt"),
    "prompt array with a number": Case(caption(prompt=["a", 1]), 400, "invalidPrompt", "prompt"),
    "prompt empty array": Case(caption(prompt=[]), 400, "invalidPrompt", "prompt"),
    "prompt and template": Case(
        caption(prompt="a", template="b"), 400, "invalidPrompt", "template"
    ),
    "prompt too long": Case(
        caption(prompt="x" * 20_001), 400, "invalidPrompt", "prompt", extra={"max": 20_000}
    ),
    # -- other fields
    "an unknown field": Case(
        caption(numberResults=2), 400, "unsupportedParameter", "numberResults"
    ),
    "includeCost a string": Case(
        caption(includeCost="yes"),
        400,
        "invalidParameter",
        "includeCost",
        extra={"type": "boolean"},
    ),
    "deliveryMethod unknown": Case(
        caption(deliveryMethod="later"),
        400,
        "invalidParameter",
        "deliveryMethod",
        extra={"allowedValues": ["sync", "async"]},
    ),
    "ttl below 60": Case(caption(ttl=59), 400, "invalidParameter", "ttl", extra={"min": 60}),
    "ttl a string": Case(caption(ttl="60"), 400, "invalidParameter", "ttl"),
    "ttl over a year": Case(
        caption(ttl=365 * 24 * 3600 + 1),
        400,
        "invalidParameter",
        "ttl",
        extra={"min": 60, "max": 365 * 24 * 3600},
    ),
    "ttl of 400 digits": Case(
        caption(ttl=10**400), 400, "invalidParameter", "ttl", extra={"max": 365 * 24 * 3600}
    ),
    "outputType unknown": Case(
        caption(outputType="PNG"),
        400,
        "invalidParameter",
        "outputType",
        extra={"allowedValues": ["URL", "base64Data", "dataURI"]},
    ),
    "outputFormat unknown": Case(caption(outputFormat="GIF"), 400, "invalidParameter"),
    "outputQuality too low": Case(
        caption(outputQuality=19), 400, "invalidParameter", extra={"min": 20, "max": 99}
    ),
    "outputQuality too high": Case(caption(outputQuality=100), 400, "invalidParameter"),
    "outputQuality a float": Case(caption(outputQuality=95.5), 400, "invalidParameter"),
    "maxTokens zero": Case(caption(maxTokens=0), 400, "invalidParameter", "maxTokens"),
    "maxTokens too many": Case(
        caption(maxTokens=9000), 400, "invalidParameter", "maxTokens", extra={"max": 8192}
    ),
    "temperature negative": Case(caption(temperature=-0.1), 400, "invalidParameter"),
    "temperature a boolean": Case(caption(temperature=True), 400, "invalidParameter"),
    "seed negative": Case(caption(seed=-1), 400, "invalidParameter", "seed"),
    "maxPixels zero": Case(caption(maxPixels=0), 400, "invalidParameter", "maxPixels"),
    "responseFormat unknown": Case(caption(responseFormat="xml"), 400, "invalidParameter"),
    "jsonSchema not a schema": Case(
        caption(jsonSchema={"type": 12}), 400, "invalidParameter", "jsonSchema"
    ),
    "jsonSchema 300 levels deep": Case(
        caption(jsonSchema=nested_schema(150)),  # objects in properties: 299 levels
        400,
        "invalidParameter",
        "jsonSchema",
    ),
    "jsonSchema nested past 32 levels": Case(
        caption(jsonSchema=nested_schema(17)), 400, "invalidParameter", "jsonSchema"
    ),
    "jsonSchema over 64 KB": Case(
        caption(jsonSchema={"type": "object", "description": "x" * 70_000}),
        400,
        "invalidParameter",
        "jsonSchema",
    ),
    "jsonSchema with text output": Case(
        caption(jsonSchema={"type": "object"}, responseFormat="text"),
        400,
        "invalidParameter",
        "responseFormat",
    ),
    "routing not an object": Case(caption(routing="eu"), 400, "invalidParameter", "routing"),
    "an unknown model": Case(caption(model="no-such-model"), 400, "unknownModel", "model"),
    "model empty": Case(caption(model=""), 400, "invalidModel", "model"),
    "model a number": Case(caption(model=152), 400, "invalidModel", "model"),
    "webhookURL private": Case(
        caption(webhookURL="http://10.9.8.7/hook"), 400, "invalidParameter", "webhookURL"
    ),
    "webhookURL ftp": Case(
        caption(webhookURL="ftp://example.com/hook"), 400, "invalidParameter", "webhookURL"
    ),
    "uploadEndpoint not a URL": Case(
        caption(uploadEndpoint="somewhere"), 400, "invalidParameter", "uploadEndpoint"
    ),
    "ping not a boolean": Case({"taskType": "ping", "ping": "yes"}, 400, "invalidParameter"),
    # -- keys
    "no API key": Case(caption(), 401, "missingApiKey", "apiKey", headers={}, names_tasks=False),
    "a wrong API key": Case(
        caption(),
        401,
        "invalidApiKey",
        "apiKey",
        headers={"Authorization": "Bearer nope"},
        names_tasks=False,
    ),
    "a wrong API key is refused before the body is parsed": Case(
        b"[{nope",
        401,
        "invalidApiKey",
        "apiKey",
        headers={"Authorization": "Bearer nope"},
        names_tasks=False,
    ),
    "a wrong key in an authentication task": Case(
        [{"taskType": "authentication", "apiKey": "nope"}, caption()],
        401,
        "invalidApiKey",
        "apiKey",
        headers={},
        names_tasks=False,  # refused from the body's first element, before the rest is read
    ),
    "apiKey not a string": Case(
        [{"taskType": "authentication", "apiKey": 1}, caption()],
        401,
        "invalidApiKey",
        "apiKey",
        headers={},
        names_tasks=False,
    ),
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_files: ModelFiles
) -> Iterator[LiveServer]:
    """The real TaskService and engine, on the tiny model."""
    home = tmp_path_factory.mktemp("home")
    settings = api_settings(
        home, api_keys=[KEY], max_body_bytes=BODY_LIMIT, max_image_megapixels=1.0, n_threads=2
    )
    with live_server(settings, None, install_model(settings, tiny_model_files)) as server:
        server.wait_ready()
        yield server


def good_request_works(server: LiveServer) -> None:
    task = caption(taskUUID=new_uuid(), prompt="Still fine.")
    answer = post(server, [task], headers=AUTH)
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["data"]
    assert (item["taskUUID"], item["status"], type(item["text"])) == (
        task["taskUUID"],
        "success",
        str,
    )


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request(server: LiveServer, name: str) -> None:
    case = CASES[name]
    answer = post(server, case.body, headers=case.headers)
    assert answer.status_code == case.status, answer.text
    body = answer.json()
    assert body.get("errors"), body
    error = (
        body["errors"][-1]
        if isinstance(case.body, list) and len(case.body) > 1
        else body["errors"][0]
    )
    assert error["code"] == case.code, error
    assert error["message"] and error["message"][-1] in ".)", error
    if case.parameter is not None:
        assert error["parameter"] == case.parameter, error
    assert case.extra.items() <= error.items(), error
    tasks = case.body if isinstance(case.body, list) else [case.body]
    sent = [t for t in tasks if isinstance(t, dict) and isinstance(t.get("taskUUID"), str)]
    for task in sent:  # every error names its task (the rest answer for the body)
        if task.get("taskType") != "authentication" and case.status != 200 and case.names_tasks:
            assert task["taskUUID"] in {e.get("taskUUID") for e in body["errors"]}
    good_request_works(server)


def test_an_oversize_chunked_body_is_refused_while_reading(server: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // 1024 + 2):
            yield b" " * 1024

    headers = {**AUTH, "Content-Type": "application/json"}
    answer = httpx.post(server.url, content=chunks(), headers=headers, timeout=30)
    assert (answer.status_code, answer.json()["errors"][0]["code"]) == (413, "invalidParameter")
    good_request_works(server)


def test_a_url_answering_an_error_is_download_failed(server: LiveServer) -> None:
    receiver = Receiver([])  # answers GET with 501
    try:
        answer = post(server, [with_image(receiver.url("/cat.png"))], headers=AUTH)
    finally:
        receiver.close()
    error = answer.json()["errors"][0]
    assert (answer.status_code, error["code"], error["parameter"]) == (
        400,
        "downloadFailed",
        "inputs.image",
    )
    assert "HTTP 501" in error["message"]


def test_errors_never_carry_an_empty_errors_list_and_items_never_error_keys(
    server: LiveServer,
) -> None:
    answer = post(server, [caption(taskUUID=new_uuid())], headers=AUTH)
    body = answer.json()
    assert "errors" not in body
    assert not {"code", "error", "errorId"} & set(body["data"][0])
    assert json.loads(answer.text) == body
