"""The REST API end to end: a real uvicorn server with the real TaskService, on a loopback port.

The engine is tests.support.engines' scripted fake (it answers "<model> saw <prompt>" and takes
2 s of measured compute per caption, so cost = 2 x cost_per_second); test_api_proof.py runs
the same paths on the real tiny model.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from edgecap.config import DEFAULT_PROMPT
from tests.support.api import LiveServer, api_settings, install_model, live_server, new_uuid, post
from tests.support.engines import ScriptedEngineFactory
from tests.support.http import Receiver, image_host
from tests.support.images import b64, data_uri, jpeg_bytes, png_bytes
from tests.support.tasks import FakeClock
from tests.support.waiting import wait_until

COST = 0.0004  # the scripted engine reports 2.0 s of compute; cost_per_second is 0.0002


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> ScriptedEngineFactory:
    return ScriptedEngineFactory(tmp_path_factory.mktemp("engine") / "calls.log")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, factory: ScriptedEngineFactory
) -> Iterator[LiveServer]:
    settings = api_settings(tmp_path_factory.mktemp("home"))
    with live_server(settings, factory, install_model(settings)) as server:
        server.wait_ready()
        yield server


def caption_task(image: str, **fields: Any) -> dict[str, Any]:
    return {"taskType": "caption", "taskUUID": new_uuid(), "inputs": {"image": image}, **fields}


def upload(server: LiveServer, image: bytes) -> dict[str, Any]:
    task = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": data_uri(image)}
    answer = post(server, [task])
    assert answer.status_code == 200, answer.text
    item: dict[str, Any] = answer.json()["data"][0]
    return item


# ---------------------------------------------------------------------------- captions


@pytest.mark.parametrize("source", ["url", "data URI", "base64", "uploaded UUID"])
@pytest.mark.parametrize("include_cost", [True, False])
def test_caption_from_every_image_source(
    server: LiveServer, source: str, include_cost: bool
) -> None:
    picture = png_bytes()
    with image_host(picture) as host:
        image = {
            "url": host.url(),
            "data URI": data_uri(picture),
            "base64": b64(picture),
            "uploaded UUID": upload(server, picture)["imageUUID"]
            if source.startswith("up")
            else "",
        }[source]
        task = caption_task(
            image, model="runware:152@2", prompt="Name the color.", includeCost=include_cost
        )
        answer = post(server, [task])
        assert host.requests == (["/picture.png"] if source == "url" else [])
    expected = {
        "taskType": "imageCaption",
        "taskUUID": task["taskUUID"],
        "status": "success",
        "text": "default saw Name the color.",
    }
    if include_cost:
        expected["cost"] = COST
    assert (answer.status_code, answer.json()) == (200, {"data": [expected]})


def test_legacy_forms_prompt_array_template_default_prompt(server: LiveServer) -> None:
    image = data_uri(png_bytes())
    tasks = [
        {
            "taskType": "imageCaption",
            "taskUUID": new_uuid(),
            "inputImage": image,
            "prompt": ["First line.", "Second line."],
        },
        {
            "taskType": "imageCaption",
            "taskUUID": new_uuid(),
            "inputImage": image,
            "template": "As a template.",
        },
        caption_task(image),
    ]
    answer = post(server, tasks)
    texts = {item["taskUUID"]: item["text"] for item in answer.json()["data"]}
    assert answer.status_code == 200
    assert texts == {
        tasks[0]["taskUUID"]: "default saw First line.\nSecond line.",
        tasks[1]["taskUUID"]: "default saw As a template.",
        tasks[2]["taskUUID"]: f"default saw {DEFAULT_PROMPT}",
    }


def test_a_single_task_object_and_the_root_path_are_accepted(server: LiveServer) -> None:
    task = caption_task(b64(png_bytes()), prompt="Root.")
    answer = httpx.post(server.url.removesuffix("v1"), json=task, timeout=60)
    assert answer.status_code == 200
    assert answer.json()["data"][0]["text"] == "default saw Root."


def test_several_images_give_one_item_each_under_the_task_uuid(server: LiveServer) -> None:
    task = {
        "taskType": "imageCaption",
        "taskUUID": new_uuid(),
        "inputImages": [b64(png_bytes()), b64(png_bytes(color=(0, 0, 255)))],
        "prompt": "Each.",
    }
    answer = post(server, [task])
    item = {
        "taskType": "imageCaption",
        "taskUUID": task["taskUUID"],
        "status": "success",
        "text": "default saw Each.",
    }
    assert (answer.status_code, answer.json()) == (200, {"data": [item, item]})
    polled = post(server, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}])
    assert polled.json() == {"data": [item, item]}


def test_mixed_success_and_failure_is_200_with_both_keys(server: LiveServer) -> None:
    good, bad = caption_task(b64(png_bytes()), prompt="Fine."), caption_task("bm90IGFuIGltYWdl")
    answer = post(server, [good, bad])
    body = answer.json()
    assert answer.status_code == 200
    assert [item["taskUUID"] for item in body["data"]] == [good["taskUUID"]]
    assert [(e["code"], e["taskUUID"], e["taskType"]) for e in body["errors"]] == [
        ("invalidInputImage", bad["taskUUID"], "caption")
    ]
    assert all(key not in body["data"][0] for key in ("code", "error", "errorId"))


def test_an_engine_error_is_the_tasks_error_with_its_status(server: LiveServer) -> None:
    task = caption_task(b64(png_bytes()), prompt="invalid")
    answer = post(server, [task])
    assert answer.status_code == 400
    assert answer.json() == {
        "errors": [
            {
                "code": "invalidParameter",
                "message": "too big",
                "parameter": "maxPixels",
                "max": 9,
                "taskType": "imageCaption",
                "taskUUID": task["taskUUID"],
                "status": "error",
            }
        ]
    }


# ---------------------------------------------------------------------------- async, polling


def test_async_acknowledges_then_polling_sees_processing_then_success(server: LiveServer) -> None:
    task = caption_task(b64(png_bytes()), prompt="sleep:1.5", deliveryMethod="async")
    answer = post(server, [task])
    processing = {"taskType": "imageCaption", "taskUUID": task["taskUUID"], "status": "processing"}
    assert (answer.status_code, answer.json()) == (200, {"data": [processing]})
    poll = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]
    assert post(server, poll).json() == {"data": [processing]}
    wait_until(lambda: post(server, poll).json()["data"][0]["status"] == "success", "success")
    assert post(server, poll).json()["data"][0]["text"] == "default saw sleep:1.5"


def test_get_task_details_returns_the_request_and_the_response(server: LiveServer) -> None:
    task = caption_task(b64(png_bytes()), prompt="Details.", includeCost=True)
    first = post(server, [task]).json()
    details = post(server, [{"taskType": "getTaskDetails", "taskUUID": task["taskUUID"]}])
    assert details.json() == {
        "data": [
            {
                "taskType": "getTaskDetails",
                "taskUUID": task["taskUUID"],
                "request": [task],
                "response": first,
            }
        ]
    }


def test_inline_images_are_stored_as_a_placeholder(server: LiveServer) -> None:
    image = b64(png_bytes(400, 300, (1, 2, 3)))
    task = caption_task(image, prompt="Big.")
    post(server, [task])
    details = post(server, [{"taskType": "getTaskDetails", "taskUUID": task["taskUUID"]}])
    stored = details.json()["data"][0]["request"][0]["inputs"]["image"]
    assert stored.startswith(f"<inline image: {len(image)} characters, sha256 ")


def test_unknown_task_uuid_is_404_task_not_found(server: LiveServer) -> None:
    unknown = new_uuid()
    answer = post(server, [{"taskType": "getResponse", "taskUUID": unknown}])
    assert answer.status_code == 404
    error = answer.json()["errors"][0]
    assert (error["code"], error["taskUUID"], error["taskType"]) == (
        "taskNotFound",
        unknown,
        "getResponse",
    )


# ---------------------------------------------------------------------------- resends


def test_the_same_task_resent_returns_its_result_without_running_again(
    server: LiveServer, factory: ScriptedEngineFactory
) -> None:
    with image_host(png_bytes()) as host:
        task = caption_task(host.url(), prompt=f"Once {new_uuid()}.")
        first, second = post(server, [task]), post(server, [task])
        assert host.requests == ["/picture.png"]  # the resend did not fetch the image again
    assert first.json() == second.json()
    assert factory.lines("caption").count(task["prompt"]) == 1


def test_a_used_task_uuid_with_another_payload_is_a_conflict(server: LiveServer) -> None:
    task = caption_task(b64(png_bytes()), prompt="Original.")
    post(server, [task])
    answer = post(server, [{**task, "prompt": "Changed."}])
    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert (error["code"], error["parameter"], error["taskUUID"]) == (
        "conflictTaskUUID",
        "taskUUID",
        task["taskUUID"],
    )


# ---------------------------------------------------------------------------- delivery


def test_webhook_retried_after_a_500_and_upload_put(server: LiveServer) -> None:
    hook, sink = Receiver([500]), Receiver([])
    try:
        task = caption_task(
            b64(png_bytes()),
            prompt="Deliver.",
            deliveryMethod="async",
            webhookURL=hook.url("/hook"),
            uploadEndpoint=sink.url("/put/caption.txt"),
        )
        assert post(server, [task]).status_code == 200
        wait_until(
            lambda: len(hook.received) == 2 and len(sink.received) == 1, "2 webhooks, 1 upload"
        )
    finally:
        hook.close()
        sink.close()
    item = {
        "taskType": "imageCaption",
        "taskUUID": task["taskUUID"],
        "status": "success",
        "text": "default saw Deliver.",
    }
    assert [(r.method, r.path) for r in hook.received] == [("POST", "/hook")] * 2
    assert hook.received[1].content_type == "application/json"
    assert httpx.Response(200, content=hook.received[1].body).json() == {"data": [item]}
    put = sink.received[0]
    assert (put.method, put.path, put.content_type, put.body) == (
        "PUT",
        "/put/caption.txt",
        "text/plain; charset=utf-8",
        b"default saw Deliver.",
    )


# ---------------------------------------------------------------------------- uploads


def test_uploaded_images_are_served_and_big_ones_downscaled(server: LiveServer) -> None:
    small = png_bytes(30, 20)
    item = upload(server, small)
    assert item["imageURL"] == f"{server.url}/images/{item['imageUUID']}"
    served = httpx.get(item["imageURL"])
    assert (served.status_code, served.headers["content-type"]) == (200, "image/png")
    with Image.open(io.BytesIO(served.content)) as stored:  # re-encoded, the same pixels
        assert stored.convert("RGB").tobytes() == Image.open(io.BytesIO(small)).tobytes()
    big = upload(server, jpeg_bytes(3000, 1000))
    with Image.open(io.BytesIO(httpx.get(big["imageURL"]).content)) as stored:
        assert stored.size == (2048, 683)
    missing = httpx.get(f"{server.url}/images/{new_uuid()}")
    assert (missing.status_code, missing.json()["errors"][0]["code"]) == (404, "mediaNotFound")


# ---------------------------------------------------------------------------- operations


def test_health_readiness_metrics_and_docs(server: LiveServer) -> None:
    root = server.url.removesuffix("/v1")
    post(server, [caption_task(b64(png_bytes()), prompt="Metrics.")])
    assert httpx.get(f"{root}/healthz").json() == {"status": "ok"}
    assert (httpx.get(f"{root}/readyz").status_code, httpx.get(f"{root}/readyz").json()) == (
        200,
        {"status": "ready"},
    )
    metrics = httpx.get(f"{root}/metrics").text
    for line in (
        "edgecap_queue_depth 0.0",
        'edgecap_api_tasks_total{outcome="success",task_type="caption"}',
        'edgecap_tokens_total{kind="generated"}',
        'edgecap_stage_latency_seconds{quantile="0.5",stage="encode"} 1.0',
        'edgecap_stage_seconds_bucket{le="0.5",stage="encode"} 0.0',
        "edgecap_api_task_seconds_bucket",
        "edgecap_image_load_seconds_count",
        "edgecap_ready 1.0",
    ):
        assert line in metrics
    # The fake engine's encode takes exactly 1 s: every task sits in the le="1" bucket.
    encodes = re.search(r'edgecap_stage_seconds_count\{stage="encode"\} (\d+)', metrics)
    assert encodes and int(encodes[1]) >= 1
    for le in ("1.0", "+Inf"):  # prometheus-client writes bounds as floats
        assert f'edgecap_stage_seconds_bucket{{le="{le}",stage="encode"}} {encodes[1]}.0' in metrics
    assert httpx.get(f"{root}/docs").status_code == 200
    schemas = httpx.get(f"{root}/openapi.json").json()["components"]["schemas"]
    assert {"TaskArray", "CaptionTask", "ImageUploadTask", "GetResponseTask"} <= set(schemas)


# ---------------------------------------------------------------------------- limits


def test_sync_timeout_is_504_and_the_task_goes_on(slow_server: LiveServer) -> None:
    task = caption_task(b64(png_bytes()), prompt="sleep:1")
    answer = post(slow_server, [task])
    assert answer.status_code == 504
    error = answer.json()["errors"][0]
    assert (error["code"], error["taskUUID"]) == ("timeoutProvider", task["taskUUID"])
    poll = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]
    wait_until(lambda: post(slow_server, poll).json()["data"][0]["status"] == "success", "success")


def test_a_full_queue_is_429_with_retry_after(slow_server: LiveServer) -> None:
    busy = [
        caption_task(b64(png_bytes()), prompt="sleep:2", deliveryMethod="async") for _ in range(2)
    ]  # one runs, one waits: the queue is full
    assert [post(slow_server, [task]).status_code for task in busy] == [200, 200]
    wait_until(lambda: slow_server.service.queue_depth() == 1, "one queued task")
    refused = post(slow_server, [caption_task(b64(png_bytes()), deliveryMethod="async")])
    assert refused.status_code == 429
    error = refused.json()["errors"][0]
    assert error["code"] == "rateLimitExceeded"
    assert int(refused.headers["Retry-After"]) == error["retryAfter"] >= 1


def test_a_full_queue_is_429_before_any_image_is_fetched_or_decoded(
    slow_server: LiveServer,
) -> None:
    busy = [
        caption_task(b64(png_bytes()), prompt="sleep:2", deliveryMethod="async") for _ in range(2)
    ]
    assert [post(slow_server, [task]).status_code for task in busy] == [200, 200]
    wait_until(lambda: slow_server.service.queue_depth() == 1, "one queued task")
    # fetched, this image would be downloadFailed; decoded, this one invalidInputImage
    for image in ("http://127.0.0.1:1/cat.png", "bm90IGFuIGltYWdl"):
        refused = post(slow_server, [caption_task(image, deliveryMethod="async")])
        error = refused.json()["errors"][0]
        assert (refused.status_code, error["code"]) == (429, "rateLimitExceeded"), refused.text
        assert int(refused.headers["Retry-After"]) == error["retryAfter"] >= 1
    again = post(slow_server, [busy[1]])  # a task already queued is still answered
    assert (again.status_code, again.json()["data"][0]["taskUUID"]) == (200, busy[1]["taskUUID"])


def test_at_most_64_tasks_per_request(server: LiveServer) -> None:
    pings = [{"taskType": "ping", "ping": True}] * 64
    assert len(post(server, pings).json()["data"]) == 64
    refused = post(server, [*pings, pings[0]])
    error = refused.json()["errors"][0]
    assert (refused.status_code, error["code"], error["max"]) == (400, "invalidParameter", 64)
    assert "at most 64" in error["message"]


def test_results_expire_after_their_ttl(tmp_path: Path) -> None:
    settings = api_settings(tmp_path / "home")
    clock = FakeClock()
    factory = ScriptedEngineFactory(tmp_path / "calls.log")
    with live_server(settings, factory, install_model(settings), clock=clock) as server:
        task = caption_task(b64(png_bytes()), prompt="Expiring.", ttl=60)
        assert post(server, [task]).status_code == 200
        poll = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]
        assert post(server, poll).json()["data"][0]["status"] == "success"
        clock.now += 61
        expired = post(server, poll)
        assert expired.status_code == 404
        assert expired.json()["errors"][0]["code"] == "taskExpired"
        resent = post(server, [task])  # the same task again: still expired, not rerun
        assert (resent.status_code, resent.json()["errors"][0]["code"]) == (404, "taskExpired")


# ---------------------------------------------------------------------------- API keys


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, factory: ScriptedEngineFactory
) -> Iterator[LiveServer]:
    settings = api_settings(tmp_path_factory.mktemp("keyed"), api_keys=["key-one", "key-two"])
    with live_server(settings, factory, install_model(settings)) as server:
        server.wait_ready()
        yield server


def test_api_keys_by_bearer_header_or_authentication_task(keyed_server: LiveServer) -> None:
    task = caption_task(b64(png_bytes()), prompt="Keyed.")
    ok = post(keyed_server, [task], headers={"Authorization": "Bearer key-two"})
    assert (ok.status_code, ok.json()["data"][0]["text"]) == (200, "default saw Keyed.")
    auth = {"taskType": "authentication", "apiKey": "key-one"}
    task = {**task, "taskUUID": new_uuid()}  # key-two's taskUUID is not key-one's to reuse
    ok = post(keyed_server, [auth, task])  # the reply is the tasks' only
    assert (ok.status_code, [item["text"] for item in ok.json()["data"]]) == (
        200,
        ["default saw Keyed."],
    )
    alone = post(keyed_server, [auth])
    assert (alone.status_code, alone.json()) == (200, {"data": [{"taskType": "authentication"}]})
    failed = post(keyed_server, [auth, caption_task("bm90IGFuIGltYWdl")])
    assert (failed.status_code, failed.json()["errors"][0]["code"]) == (400, "invalidInputImage")


def test_a_wrong_bearer_key_is_401_before_the_body_is_read(keyed_server: LiveServer) -> None:
    wrong = {"Authorization": "Bearer wrong", "Content-Type": "application/json"}
    for body in (b"[{not json", b"[" + b"{}," * 100 + b"{}]"):
        answer = httpx.post(keyed_server.url, content=body, headers=wrong, timeout=30)
        assert answer.status_code == 401
        assert answer.json() == {
            "errors": [
                {
                    "code": "invalidApiKey",
                    "message": answer.json()["errors"][0]["message"],
                    "parameter": "apiKey",
                }
            ]
        }
    auth = {"taskType": "authentication", "apiKey": "key-one"}  # 64 tasks after it are fine
    many = post(keyed_server, [auth, *[{"taskType": "ping", "ping": True}] * 64])
    assert (many.status_code, len(many.json()["data"])) == (200, 64)


@pytest.mark.parametrize(
    ("headers", "first", "code"),
    [
        ({}, [], "missingApiKey"),
        ({"Authorization": "Basic a2V5LW9uZQ=="}, [], "missingApiKey"),
        ({}, [{"taskType": "authentication", "apiKey": "wrong"}], "invalidApiKey"),
    ],
)
def test_missing_or_wrong_keys_are_401_before_the_tasks_are_read(
    keyed_server: LiveServer, headers: dict[str, str], first: list[Any], code: str
) -> None:
    """Decided from the headers and the body's first element (issue 9, finding 3): one error
    for the request, naming no task — the tasks after it were never parsed."""
    tasks = [caption_task(b64(png_bytes())), {"taskType": "ping", "ping": True}]
    answer = post(keyed_server, [*first, *tasks], headers=headers)
    assert answer.status_code == 401
    errors = answer.json()["errors"]
    assert [e["code"] for e in errors] == [code]
    assert "taskUUID" not in errors[0]
    assert "data" not in answer.json()
