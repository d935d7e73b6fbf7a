"""TaskService end to end with the scripted engine in a real child process: submit, wait,
idempotency, back-pressure, restart recovery, crash retry, expiry, delivery, stats."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import edgecap
from edgecap.config import Settings
from edgecap.errors import NotFound, RateLimited
from edgecap.inputs.images import load_image
from edgecap.protocol import cost_of
from edgecap.records import CaptionRequest, CaptionResult, ModelFiles, Sampling
from edgecap.registry import Registry
from edgecap.runtime.service import (
    MAX_ATTEMPTS,
    CaptionJob,
    TaskConflict,
    TaskExpired,
    TaskRecord,
    TaskService,
)
from tests.support.engines import FAKE_COMPUTE_S, ScriptedEngineFactory
from tests.support.http import Receiver
from tests.support.tasks import FakeClock, make_job
from tests.support.waiting import wait_until

WAIT_S = 60.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        url_allowlist=["127.0.0.1"],
        delivery_allowlist=["127.0.0.1"],
        cost_per_second=0.001,
    )


@pytest.fixture
def factory(tmp_path: Path) -> ScriptedEngineFactory:
    return ScriptedEngineFactory(tmp_path / "engine.log")


@pytest.fixture
def make_service(
    settings: Settings, factory: ScriptedEngineFactory
) -> Iterator[Callable[..., TaskService]]:
    made: list[TaskService] = []

    def make(start: bool = True, **kwargs: object) -> TaskService:
        service = TaskService(settings, factory, **kwargs)  # type: ignore[arg-type]
        if start:
            service.start()
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop()


def job(prompt: str = "a cat", **fields: Any) -> CaptionJob:
    fields.setdefault("webhook_url", None)
    return make_job(prompt=prompt, **fields)


def finished(service: TaskService, task: CaptionJob) -> TaskRecord:
    record = asyncio.run(service.wait(task.task_uuid, WAIT_S))
    assert record.finished, f"task still {record.status} after {WAIT_S} s"
    return record


def test_submit_then_wait_gives_the_result_item_with_a_measured_cost(
    make_service: Callable[..., TaskService],
) -> None:
    service = make_service()
    task = job("a cat", include_cost=True, ttl_s=600)
    # durable once submit returns; a dispatcher thread may already have claimed it
    assert service.submit(task).status in ("queued", "processing")
    record = finished(service, task)
    item = {
        "taskType": "imageCaption",
        "taskUUID": task.task_uuid,
        "status": "success",
        "text": "qwen2.5-vl-7b saw a cat",
        "cost": FAKE_COMPUTE_S * 0.001,
    }
    assert record.status == "success"
    assert record.result == item
    assert record.response == {"data": [item]}
    assert record.error is None
    assert record.original_task == task.original_task
    assert service.get(task.task_uuid) == record


def test_cost_is_left_out_unless_asked(make_service: Callable[..., TaskService]) -> None:
    service = make_service()
    task = job(include_cost=False)
    service.submit(task)
    assert finished(service, task).result is not None
    assert "cost" not in finished(service, task).result  # type: ignore[operator]


def test_cost_is_compute_seconds_times_the_rate_to_six_digits() -> None:
    result = CaptionResult(
        text="",
        finish_reason="stop",
        prompt_tokens=1,
        image_tokens=0,
        generated_tokens=1,
        timings={"encode": 1.0, "generate": 1 / 3},
        model="m",
    )
    assert cost_of(result, 0.0002) == 0.000266667
    assert cost_of(result, 0.0) == 0.0


def test_the_same_task_resent_is_idempotent_and_another_under_its_uuid_conflicts(
    make_service: Callable[..., TaskService],
) -> None:
    service = make_service(start=False)
    task = job("first")
    assert service.submit(task) == service.submit(task)
    assert service.queue_depth() == 1

    other = job("second", task_uuid=task.task_uuid)
    with pytest.raises(TaskConflict) as caught:
        service.submit(other)
    assert (caught.value.code, caught.value.status) == ("conflictTaskUUID", 400)
    assert caught.value.parameter == "taskUUID"


def test_a_full_queue_is_rate_limited_with_a_retry_after(
    tmp_path: Path, factory: ScriptedEngineFactory
) -> None:
    settings = Settings(home=tmp_path / "small", queue_size=2)
    service = TaskService(settings, factory)  # not started: nothing leaves the queue
    try:
        first = job("1")
        service.submit(first)
        service.submit(job("2"))
        with pytest.raises(RateLimited) as caught:
            service.submit(job("3"))
        assert (caught.value.code, caught.value.status) == ("rateLimitExceeded", 429)
        retry_after = caught.value.extra["retry_after"]
        assert isinstance(retry_after, int) and retry_after >= 1
        assert service.submit(first).status == "queued"  # a resend is still answered
        assert service.queue_depth() == 2
    finally:
        service.stop()


def test_tasks_left_by_a_stopped_server_finish_after_a_restart(
    make_service: Callable[..., TaskService],
) -> None:
    before = make_service(start=False)
    waiting, in_flight = job("waiting"), job("in flight")
    before.submit(in_flight)
    before.submit(waiting)
    assert before.store.claim_next() is not None  # it was being captioned when the server died
    before.stop()

    after = make_service()
    assert finished(after, in_flight).result["text"] == "qwen2.5-vl-7b saw in flight"  # type: ignore[index]
    assert finished(after, waiting).status == "success"


@pytest.mark.slow
def test_a_task_that_aborts_the_engine_is_retried_once_then_fails(
    make_service: Callable[..., TaskService], factory: ScriptedEngineFactory
) -> None:
    service = make_service()
    crash = job("abort")
    service.submit(crash)
    record = finished(service, crash)
    assert record.status == "error"
    assert record.error is not None
    assert record.error["code"] == "inferenceError"
    assert record.error["taskUUID"] == crash.task_uuid
    assert record.error["taskType"] == "imageCaption"
    assert f"tried {MAX_ATTEMPTS} times" in record.error["message"]
    assert record.response == {"errors": [record.error]}
    assert factory.lines("caption").count("abort") == MAX_ATTEMPTS

    after = job("the next one")
    service.submit(after)
    assert finished(service, after).status == "success"
    assert service.stats()["worker"]["restarts"] == MAX_ATTEMPTS


@pytest.mark.slow
def test_a_task_that_aborts_once_succeeds_on_its_retry(
    make_service: Callable[..., TaskService], tmp_path: Path
) -> None:
    service = make_service()
    flaky = job(f"abort-once:{tmp_path / 'aborted'}")
    service.submit(flaky)
    assert finished(service, flaky).status == "success"
    assert service.stats()["worker"]["restarts"] == 1


def test_an_engine_error_becomes_the_task_error(make_service: Callable[..., TaskService]) -> None:
    service = make_service()
    task = job("invalid")
    service.submit(task)
    record = finished(service, task)
    assert record.error == {
        "code": "invalidParameter",
        "message": "too big",
        "parameter": "maxPixels",
        "max": 9,
        "taskType": "imageCaption",
        "taskUUID": task.task_uuid,
    }


def test_wait_returns_the_current_record_at_its_timeout(
    make_service: Callable[..., TaskService],
) -> None:
    service = make_service(start=False)
    task = job()
    service.submit(task)
    assert asyncio.run(service.wait(task.task_uuid, 0.05)).status == "queued"
    with pytest.raises(NotFound):
        asyncio.run(service.wait(str(uuid.uuid4()), 0.05))


def test_many_waiters_are_woken(make_service: Callable[..., TaskService]) -> None:
    service = make_service()
    tasks = [job(f"cat {n}") for n in range(3)]
    for task in tasks:
        service.submit(task)

    async def wait_all() -> list[TaskRecord]:
        waits = [service.wait(t.task_uuid, WAIT_S) for t in tasks for _ in range(2)]
        return await asyncio.gather(*waits)

    records = asyncio.run(wait_all())
    assert [r.status for r in records] == ["success"] * 6


def test_results_expire_after_their_ttl_and_are_purged(
    make_service: Callable[..., TaskService],
) -> None:
    clock = FakeClock()
    service = make_service(clock=clock)
    task = job(ttl_s=90)
    service.submit(task)
    assert finished(service, task).expires_at == clock.now + 90

    clock.now += 90
    with pytest.raises(TaskExpired) as caught:
        service.get(task.task_uuid)
    assert caught.value.code == "taskExpired"
    assert service.purge_expired() == 1
    with pytest.raises(TaskExpired):
        service.get(task.task_uuid)
    with pytest.raises(TaskExpired):  # a resend cannot revive it
        service.submit(task)
    assert service.stats()["tasks"]["expired"] == 1


def test_default_ttl_comes_from_the_settings(
    make_service: Callable[..., TaskService], settings: Settings
) -> None:
    clock = FakeClock()
    service = make_service(clock=clock)
    task = job(ttl_s=None)
    service.submit(task)
    assert finished(service, task).expires_at == clock.now + settings.result_ttl_s


def test_webhook_and_upload_are_delivered_after_a_500(
    make_service: Callable[..., TaskService],
) -> None:
    receiver = Receiver([500])
    try:
        service = make_service()
        task = job(webhook_url=receiver.url("/hook"), upload_endpoint=receiver.url("/up"))
        service.submit(task)
        record = finished(service, task)
        wait_until(lambda: service.stats()["deliveries"]["delivered"] == 2, "2 deliveries")
    finally:
        receiver.close()
    posts = [r for r in receiver.received if r.method == "POST"]
    puts = [r for r in receiver.received if r.method == "PUT"]
    assert len(posts) + len(puts) == 3  # one of the two got the 500 and was retried
    assert {r.body for r in posts} == {json.dumps(record.response).encode()}
    assert {(r.path, r.body, r.content_type) for r in puts} == {
        ("/up", b"qwen2.5-vl-7b saw a cat", "text/plain; charset=utf-8")
    }


def test_stats_report_queue_statuses_latencies_and_tokens(
    make_service: Callable[..., TaskService],
) -> None:
    service = make_service()
    task = job()
    service.submit(task)
    finished(service, task)
    stats = service.stats()
    assert stats["queue_depth"] == 0
    assert stats["tasks"]["success"] == 1
    assert stats["tokens"] == {"prompt": 12, "image": 2, "generated": 5}
    assert stats["latency_seconds"]["encode"] == [1.0]
    assert {"load_image", "prefill", "generate", "queue", "run"} <= stats["latency_seconds"].keys()
    assert stats["worker"]["ready"] is True


# ---------------------------------------------------------------------------- the real engine


def test_the_real_tiny_model_captions_through_the_default_engine_factory(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """Registry → Engine in the child process → result, cost and stats in the parent."""
    settings = Settings(home=tmp_path / "home", cost_per_second=0.001, n_ctx=1024)
    Registry(settings).register_local("tiny", tiny_model_files.text, tiny_model_files.mmproj)
    sample = Path(edgecap.__file__).parent / "data" / "sample.jpg"
    image = load_image(sample, settings, max_pixels=16 * 28 * 28)
    request = CaptionRequest(image, "Describe the picture.", sampling=Sampling(max_tokens=8))
    task = replace(job(model="tiny", include_cost=True), request=request)
    service = TaskService(settings)
    service.start()
    try:
        service.submit(task)
        record = finished(service, task)
        stats = service.stats()
    finally:
        service.stop()
    assert record.status == "success", record.error
    assert record.result is not None and isinstance(record.result["text"], str)
    assert record.result["cost"] > 0
    assert stats["tokens"]["image"] == image.tokens
    assert 1 <= stats["tokens"]["generated"] <= 8
    assert len(stats["latency_seconds"]["encode"]) == 1


def test_results_and_webhooks_carry_the_clients_task_uuid_not_a_derived_one(
    make_service: Callable[..., TaskService],
) -> None:
    """The extra images of a multi-image task are stored under derived UUIDs; what the client
    gets back names the taskUUID it sent."""
    receiver = Receiver([])
    try:
        service = make_service()
        sent_uuid = str(uuid.uuid4())
        derived = str(uuid.uuid5(uuid.UUID(sent_uuid), "inputImages[1]"))
        task = job(
            task_uuid=derived,
            webhook_url=receiver.url("/hook"),
            original_task={"taskType": "caption", "taskUUID": sent_uuid, "prompt": "a cat"},
        )
        service.submit(task)
        record = finished(service, task)
        wait_until(lambda: service.stats()["deliveries"]["delivered"] == 1, "the delivery")
    finally:
        receiver.close()
    assert record.status == "success"
    assert record.result is not None and record.result["taskUUID"] == sent_uuid
    assert record.response == {"data": [record.result]}
    assert service.get(derived) == record  # still stored under its own UUID
    (hook,) = receiver.received
    assert json.loads(hook.body)["data"][0]["taskUUID"] == sent_uuid


def test_an_error_carries_the_clients_task_uuid(
    make_service: Callable[..., TaskService],
) -> None:
    service = make_service()
    sent_uuid = str(uuid.uuid4())
    task = job(
        "invalid",
        task_uuid=str(uuid.uuid5(uuid.UUID(sent_uuid), "inputImages[1]")),
        original_task={"taskType": "caption", "taskUUID": sent_uuid},
    )
    service.submit(task)
    record = finished(service, task)
    assert record.error is not None and record.error["taskUUID"] == sent_uuid


def test_a_huge_ttl_does_not_leave_the_task_processing(
    make_service: Callable[..., TaskService],
) -> None:
    service = make_service()
    task = job(ttl_s=10**400)
    service.submit(task)
    record = finished(service, task)
    assert record.status == "success"
    assert service.get(task.task_uuid) == record


def test_a_task_whose_result_cannot_be_recorded_fails_instead_of_staying_claimed(
    make_service: Callable[..., TaskService], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    real_finish = service.store.finish
    calls: list[str | None] = []

    def finish_once_broken(task_uuid: str, **kwargs: Any) -> TaskRecord:
        calls.append(None if kwargs["error"] is None else kwargs["error"]["code"])
        if len(calls) == 1:
            raise OverflowError("int too large to convert to float")
        return real_finish(task_uuid, **kwargs)

    monkeypatch.setattr(service.store, "finish", finish_once_broken)
    task = job()
    service.submit(task)
    record = finished(service, task)
    assert record.status == "error"
    assert record.error is not None and record.error["code"] == "inferenceError"
    assert record.error["taskUUID"] == task.task_uuid
    assert service.get(task.task_uuid) == record
    assert calls == [None, "inferenceError"]
