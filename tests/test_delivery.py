"""Webhooks and upload PUTs, sent to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgecap.config import Settings
from edgecap.runtime.delivery import (
    BACKOFF_CAP_S,
    Deliverer,
    DeliveryFailed,
    backoff_seconds,
    outgoing_for,
    send,
)
from edgecap.runtime.tasks import Outgoing, TaskStore
from tests.support.http import Received, Receiver
from tests.support.tasks import make_job
from tests.support.waiting import wait_until

WAIT_S = 30.0


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[list[int]], Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        url_allowlist=["127.0.0.1"],
        delivery_allowlist=["127.0.0.1"],
        fetch_timeout_s=5.0,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[TaskStore]:
    store = TaskStore(settings.db_path)
    yield store
    store.close()


def finish_with(store: TaskStore, outgoing: list[Outgoing]) -> str:
    job = make_job()
    store.add(job)
    store.claim_next()
    store.finish(job.task_uuid, result={}, error=None, response={}, ttl_s=60, outgoing=outgoing)
    return job.task_uuid


def test_outgoing_for_a_success_and_an_error() -> None:
    job = make_job(webhook_url="http://h/hook", upload_endpoint="http://h/up")
    success = {"data": [{"taskUUID": job.task_uuid, "text": "a cat"}]}
    hook, upload = outgoing_for(job, success, "a cat")
    assert hook == Outgoing(
        "webhook", "http://h/hook", json.dumps(success).encode(), "application/json"
    )
    assert upload == Outgoing("upload", "http://h/up", b"a cat", "text/plain; charset=utf-8")

    failure = {"errors": [{"code": "inferenceError", "taskUUID": job.task_uuid}]}
    [only] = outgoing_for(job, failure, None)  # an error has no text to upload
    assert only.kind == "webhook" and json.loads(only.body) == failure

    plain = make_job(webhook_url=None, upload_endpoint=None)
    assert outgoing_for(plain, success, "a cat") == []


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_seconds(40) == BACKOFF_CAP_S
    assert backoff_seconds(3, base_s=0.5) == 2.0


def test_send_puts_the_caption_raw_as_utf8_text(
    receiver_factory: Callable[[list[int]], Receiver], settings: Settings
) -> None:
    receiver = receiver_factory([])
    text = "Ein Hund läuft über die Wiese 🐕"
    send(
        Outgoing("upload", receiver.url("/up/1"), text.encode(), "text/plain; charset=utf-8"),
        settings,
    )
    assert receiver.received == [
        Received("PUT", "/up/1", "text/plain; charset=utf-8", text.encode("utf-8"))
    ]


def test_send_fails_on_a_non_2xx_answer_and_on_no_answer(
    receiver_factory: Callable[[list[int]], Receiver], settings: Settings
) -> None:
    receiver = receiver_factory([500])
    hook = Outgoing("webhook", receiver.url("/hook"), b"{}", "application/json")
    with pytest.raises(DeliveryFailed, match="HTTP 500") as caught:
        send(hook, settings)
    assert caught.value.parameter == "webhookURL"

    receiver.close()  # nobody listens on that port any more
    with pytest.raises(DeliveryFailed, match="failed"):
        send(hook, settings)


def test_send_refuses_urls_outside_the_network_policy(tmp_path: Path) -> None:
    strict = Settings(home=tmp_path)  # loopback is not allowed without the allow-list
    hook = Outgoing("webhook", "http://127.0.0.1:9/hook", b"{}", "application/json")
    with pytest.raises(DeliveryFailed, match="delivery_allowlist"):
        send(hook, strict)


def test_webhook_is_retried_after_a_500_and_delivered(
    receiver_factory: Callable[[list[int]], Receiver], store: TaskStore, settings: Settings
) -> None:
    receiver = receiver_factory([500])
    body = b'{"data": [{"text": "a cat"}]}'
    finish_with(store, [Outgoing("webhook", receiver.url("/hook"), body, "application/json")])
    deliverer = Deliverer(store, settings, backoff_base_s=0.05)
    deliverer.start()
    try:
        wait_until(lambda: store.delivery_counts()["delivered"] == 1, "the delivery", WAIT_S)
    finally:
        deliverer.stop()
    assert [(r.method, r.path, r.body) for r in receiver.received] == [("POST", "/hook", body)] * 2
    assert receiver.received[0].content_type == "application/json"


def test_delivery_gives_up_after_webhook_retries(
    receiver_factory: Callable[[list[int]], Receiver], tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path,
        url_allowlist=["127.0.0.1"],
        delivery_allowlist=["127.0.0.1"],
        webhook_retries=2,
    )
    store = TaskStore(settings.db_path)
    receiver = receiver_factory([503] * 10)
    finish_with(store, [Outgoing("webhook", receiver.url("/hook"), b"{}", "application/json")])
    deliverer = Deliverer(store, settings, backoff_base_s=0.01)
    deliverer.start()
    try:
        wait_until(lambda: store.delivery_counts()["failed"] == 1, "the delivery to fail", WAIT_S)
    finally:
        deliverer.stop()
        store.close()
    assert len(receiver.received) == 3  # the first attempt and two retries


def test_pending_deliveries_survive_a_restart(
    receiver_factory: Callable[[list[int]], Receiver], settings: Settings
) -> None:
    receiver = receiver_factory([])
    before = TaskStore(settings.db_path)
    finish_with(before, [Outgoing("upload", receiver.url("/up"), b"text", "text/plain")])
    before.close()  # the server went down before delivering

    after = TaskStore(settings.db_path)
    deliverer = Deliverer(after, settings)
    deliverer.start()
    try:
        wait_until(lambda: after.delivery_counts()["delivered"] == 1, "the delivery", WAIT_S)
    finally:
        deliverer.stop()
        after.close()
    assert [r.body for r in receiver.received] == [b"text"]


def test_send_does_not_read_a_huge_trickling_reply_body(settings: Settings) -> None:
    """Only the status counts: a 200 whose body is endless and slow is delivered at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
            with contextlib.suppress(OSError):  # the client hangs up without reading
                while not stop.wait(0.05):
                    conn.sendall(b"x" * 1024)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    hook = Outgoing("webhook", f"http://127.0.0.1:{port}/hook", b"{}", "application/json")
    sent = threading.Event()

    def deliver() -> None:
        send(hook, settings)  # no DeliveryFailed: a 2xx
        sent.set()

    sender = threading.Thread(target=deliver, daemon=True)
    sender.start()
    try:
        # Reading the body would take until the server stops; the deadline only guards a hang.
        assert sent.wait(WAIT_S), "send() read the endless body (or failed: see the thread)"
    finally:
        stop.set()
        listener.close()
        thread.join(5)
