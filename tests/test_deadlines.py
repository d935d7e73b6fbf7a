"""Issue 9, findings 2, 5 and 12: every outbound exchange and every task has a total deadline.

A loopback "trickler" sends one byte a second (of its headers, or of its body) for as long as
it is read; per-read timeouts never fire against it. Each call under test runs in a thread
joined with a generous deadline, so a regression shows as a failed assertion, not a hung run.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecap.config import Settings
from edgecap.errors import DownloadFailed, EdgecapError
from edgecap.inputs import fetching
from edgecap.records import CaptionRequest
from edgecap.runtime.delivery import Deliverer, DeliveryFailed, send
from edgecap.runtime.tasks import Outgoing, TaskStore
from edgecap.runtime.worker import Worker, WorkerTimedOut, WorkItem
from tests.support.engines import ScriptedEngineFactory

JOIN_S = 60.0  # far above every deadline below: only a hang reaches it
READY_WAIT_S = 60.0  # the engine child loading on a busy box


class Trickler:
    """Accepts connections and answers one byte per second, forever (``mode``: where)."""

    def __init__(self, mode: str = "headers") -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.stopping = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow.png"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        with conn:
            try:
                conn.recv(65536)
                if self.mode == "body":
                    conn.sendall(head)
                    head = b"x" * 100000
                for byte in head:
                    if self.stopping.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()


@pytest.fixture
def trickler() -> Iterator[Callable[[str], Trickler]]:
    made: list[Trickler] = []

    def make(mode: str = "headers") -> Trickler:
        made.append(Trickler(mode))
        return made[-1]

    yield make
    for one in made:
        one.close()


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "home": tmp_path,
        "url_allowlist": ["127.0.0.1"],
        "delivery_allowlist": ["127.0.0.1"],
        "fetch_timeout_s": 2.0,
    }
    return Settings(**(base | values))


def outcome(call: Callable[[], Any]) -> BaseException | Any:
    """What ``call`` returned or raised, from a thread joined within JOIN_S."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(JOIN_S)
    assert not thread.is_alive(), "the exchange was never cut off"
    return box[0]


@pytest.mark.parametrize("mode", ["headers", "body"])
def test_an_image_fetch_has_a_total_deadline(tmp_path: Path, trickler: Any, mode: str) -> None:
    slow = trickler(mode)
    result = outcome(lambda: fetching.fetch(slow.url, settings_for(tmp_path), max_bytes=10**6))
    assert isinstance(result, DownloadFailed)
    assert "took longer than 2 s" in result.message


@pytest.mark.slow  # seconds of real deadlines and process kills: not the unit tier
def test_a_webhook_and_an_upload_put_have_a_total_deadline(tmp_path: Path, trickler: Any) -> None:
    slow = trickler("headers")
    for kind in ("webhook", "upload"):
        outgoing = Outgoing(kind, slow.url, b"{}", "application/json")  # type: ignore[arg-type]
        result = outcome(lambda o=outgoing: send(o, settings_for(tmp_path)))
        assert isinstance(result, DeliveryFailed), result
        assert "took longer than 2 s" in result.message


@pytest.mark.slow  # seconds of real deadlines and process kills: not the unit tier
def test_concurrent_fetches_are_bounded(tmp_path: Path, trickler: Any) -> None:
    slow = trickler("headers")
    settings = settings_for(tmp_path, max_concurrent_fetches=1, fetch_timeout_s=2.0)
    holding = settings_for(tmp_path, max_concurrent_fetches=1, fetch_timeout_s=8.0)
    holder = threading.Thread(
        target=lambda: outcome(lambda: fetching.fetch(slow.url, holding, max_bytes=10)),
        daemon=True,
    )
    holder.start()
    deadline = time.monotonic() + JOIN_S
    while slow.connections < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = outcome(lambda: fetching.fetch(slow.url, settings, max_bytes=10))
    holder.join(JOIN_S)
    assert isinstance(second, DownloadFailed)
    assert "downloads are already in flight" in second.message
    assert slow.connections == 1  # the second fetch never connected


def test_a_slow_receiver_starves_neither_others_nor_shutdown(tmp_path: Path, trickler: Any) -> None:
    from tests.support.http import Receiver  # a fast receiver on another "destination"

    slow = trickler("headers")
    fast = Receiver([])
    settings = settings_for(tmp_path, fetch_timeout_s=30.0, delivery_per_destination=1)
    store = TaskStore(settings.db_path)
    slow_body = [Outgoing("webhook", slow.url, b"{}", "application/json") for _ in range(4)]
    fast_body = [Outgoing("webhook", fast.url("/hook"), b"{}", "application/json")] * 3
    _queue_deliveries(store, slow_body + fast_body)
    deliverer = Deliverer(store, settings)
    deliverer.start()
    try:
        deadline = time.monotonic() + JOIN_S
        while len(fast.received) < 3:
            assert time.monotonic() < deadline, "the fast receiver was starved"
            time.sleep(0.05)
        while slow.connections < 1:  # under load its sender may connect after the fast ones
            assert time.monotonic() < deadline, "nothing was sent to the slow receiver"
            time.sleep(0.05)
        time.sleep(0.5)  # room for a second connection, which must not come
        assert slow.connections == 1  # one at a time to the slow destination
    finally:
        stopped = outcome(deliverer.stop)  # must not wait out the 30 s attempt in flight
        fast.close()
    assert stopped is None
    store.close()


def _queue_deliveries(store: TaskStore, outgoing: list[Outgoing]) -> None:
    from tests.support.tasks import make_job

    for index, one in enumerate(outgoing):
        job = make_job(task_uuid=f"00000000-0000-4000-8000-{index:012d}")
        store.add(job)
        store.claim_next()
        store.finish(job.task_uuid, result={}, error=None, response={}, ttl_s=60, outgoing=[one])


# ---------------------------------------------------------------- 5: a deadline per task


@pytest.mark.slow  # seconds of real deadlines and process kills: not the unit tier
def test_a_task_past_its_deadline_is_killed_and_the_worker_recovers(tmp_path: Path) -> None:
    worker = Worker(ScriptedEngineFactory(tmp_path / "engine.log"))
    worker.start()
    try:
        deadline = time.monotonic() + READY_WAIT_S
        while not worker.ready:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stuck = WorkItem("t1", None, CaptionRequest(image=None, prompt="sleep:600"))
        result = outcome(lambda: worker.run(stuck, timeout_s=1.0))
        assert isinstance(result, WorkerTimedOut)
        assert result.code == "timeoutProvider" and "task_timeout_s" in result.message
        after = worker.run(WorkItem("t2", None, CaptionRequest(image=None, prompt="hi")))
        assert after.text == "default saw hi"
        assert worker.restarts == 1
    finally:
        worker.stop()


def test_edgecap_error_is_what_a_timeout_raises() -> None:
    assert issubclass(WorkerTimedOut, EdgecapError)
