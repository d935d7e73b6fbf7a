"""Deliver finished tasks where the client asked: ``webhookURL`` (POST), ``uploadEndpoint`` (PUT).

When a task finishes, :func:`outgoing_for` turns its envelope into deliveries, which the
service writes to the store's outbox in the same transaction as the result. A
:class:`Deliverer` sends them from its own threads, so a slow or dead receiver never holds up
inference, and pending deliveries survive a restart (at-least-once: a delivery cut off by a
crash is sent again).

A delivery succeeds on a 2xx answer. Anything else (another status, a refused connection, a
timeout, a URL the network policy refuses) is retried with exponential backoff, at most
``settings.webhook_retries`` times, and then marked failed. Each attempt re-checks the URL with
:mod:`edgecap.inputs.netguard`, connects only to the addresses it vetted, and has a total
deadline. Every attempt carries ``X-Edgecap-Delivery`` (the same id on every retry and after a
restart: receivers deduplicate by it) and, with ``webhook_secret``, ``X-Edgecap-Signature``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import httpx

from edgecap.config import Settings
from edgecap.errors import DeliveryFailed, EdgecapError
from edgecap.inputs import fetching
from edgecap.runtime.tasks import CaptionJob, Delivery, DeliveryKind, Outgoing, TaskStore

logger = logging.getLogger(__name__)

# kind -> (HTTP method, the task parameter the URL came from)
METHODS: dict[DeliveryKind, tuple[str, str]] = {
    "webhook": ("POST", "webhookURL"),
    "upload": ("PUT", "uploadEndpoint"),
}
BACKOFF_BASE_S = 1.0  # first retry after 1 s, then 2, 4, 8, ...
BACKOFF_CAP_S = 300.0
SENDERS = 4  # deliveries in flight at once, so one slow receiver does not hold up the others
IDLE_WAKE_S = 60.0  # re-read the outbox at least this often
USER_AGENT = "edgecap"
STOP_GRACE_S = 1.0  # how long stop() waits for attempts in flight
DELIVERY_NAMESPACE = uuid.UUID("6f1d3a52-3c1e-4b8e-9a57-2f0c4d1e7b90")


def outgoing_for(job: CaptionJob, response: dict[str, Any], text: str | None) -> list[Outgoing]:
    """The deliveries a finished task asks for: the envelope to its webhook, its text to its
    upload endpoint (an error has no text to upload)."""
    out = []
    if job.webhook_url:
        body = json.dumps(response).encode()
        out.append(Outgoing("webhook", job.webhook_url, body, "application/json"))
    if job.upload_endpoint and text is not None:
        out.append(
            Outgoing("upload", job.upload_endpoint, text.encode(), "text/plain; charset=utf-8")
        )
    return out


def backoff_seconds(attempt: int, base_s: float = BACKOFF_BASE_S) -> float:
    """Delay before retry number ``attempt`` (1-based): base, 2x base, 4x base, ... capped."""
    return float(min(base_s * 2 ** (attempt - 1), BACKOFF_CAP_S))


def delivery_id(task_uuid: str, kind: str) -> str:
    """The idempotency id of a task's delivery: the same on every attempt and every restart."""
    return str(uuid.uuid5(DELIVERY_NAMESPACE, f"{task_uuid}/{kind}"))


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the body>``, the X-Edgecap-Signature header."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(outgoing: Outgoing, settings: Settings, *, task_uuid: str = "") -> None:
    """Make one delivery attempt; raises :class:`DeliveryFailed` unless the answer is 2xx.

    The attempt (connect, send, headers) has a total deadline of ``fetch_timeout_s``; the
    answer's body is never read. Headers: ``X-Edgecap-Delivery`` (idempotency id, the same on
    every retry) and, with ``webhook_secret`` set, ``X-Edgecap-Signature``.
    """
    method, purpose = METHODS[outgoing.kind]
    headers = {
        "Content-Type": outgoing.content_type,
        "User-Agent": USER_AGENT,
        "X-Edgecap-Delivery": delivery_id(task_uuid, outgoing.kind),
    }
    if settings.webhook_secret:
        headers["X-Edgecap-Signature"] = signature(settings.webhook_secret, outgoing.body)
    try:
        status = fetching.deliver(
            outgoing.url,
            settings,
            method,
            content=outgoing.body,
            headers=headers,
            purpose=purpose,
        )
    except EdgecapError as exc:
        raise DeliveryFailed(exc.message, parameter=purpose) from exc
    except httpx.HTTPError as exc:
        raise DeliveryFailed(
            f"{method} {outgoing.url} failed: {exc or type(exc).__name__}", parameter=purpose
        ) from exc
    if not 200 <= status < 300:
        raise DeliveryFailed(f"{method} {outgoing.url} answered HTTP {status}", parameter=purpose)


class Deliverer:
    """Sends the outbox in the background: a scheduler thread and a few sender threads.

    At most :data:`SENDERS` deliveries are in flight, and at most
    ``settings.delivery_per_destination`` to one host, so a slow receiver holds up only its
    own deliveries. Senders are daemon threads: :meth:`stop` does not wait for an attempt in
    flight (it stays pending in the store and is sent again after a restart).
    """

    def __init__(
        self, store: TaskStore, settings: Settings, *, backoff_base_s: float = BACKOFF_BASE_S
    ) -> None:
        self._store = store
        self._settings = settings
        self._backoff_base_s = backoff_base_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: dict[int, str] = {}  # delivery id -> destination host
        self._in_flight_lock = threading.Lock()
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._send_loop, name=f"edgecap-delivery-{i}", daemon=True)
            for i in range(SENDERS)
        ]
        self._threads.append(
            threading.Thread(
                target=self._schedule_loop, name="edgecap-delivery-scheduler", daemon=True
            )
        )
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Look at the outbox now (new deliveries were queued)."""
        self._wake.set()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop scheduling; wait at most ``grace_s`` for attempts in flight."""
        self._stopping.set()
        self._wake.set()
        for _ in range(SENDERS):
            self._queue.put(None)
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._dispatch_due()
            except Exception:  # a broken store must not end delivery for good
                logger.exception("Delivery scheduling failed; retrying shortly")
            self._wake.wait(self._idle_seconds())
            self._wake.clear()

    def _send_loop(self) -> None:
        while (delivery := self._queue.get()) is not None:
            if self._stopping.is_set():
                break
            self._attempt(delivery)

    def _dispatch_due(self) -> None:
        with self._in_flight_lock:
            busy = dict(self._in_flight)
        free = SENDERS - len(busy)
        if free <= 0:
            return
        per_host = Counter(busy.values())
        limit = self._settings.delivery_per_destination
        for delivery in self._store.due_deliveries(free * 8, exclude=tuple(busy)):
            host = destination(delivery.outgoing.url)
            if per_host[host] >= limit:
                continue  # that receiver is busy enough; others go first
            per_host[host] += 1
            with self._in_flight_lock:
                self._in_flight[delivery.id] = host
            self._queue.put(delivery)
            free -= 1
            if free == 0:
                return

    def _idle_seconds(self) -> float:
        due_at = self._store.next_delivery_at()
        if due_at is None:
            return IDLE_WAKE_S
        return min(max(due_at - self._store.clock(), 0.05), IDLE_WAKE_S)

    def _attempt(self, delivery: Delivery) -> None:
        attempts = delivery.attempts + 1
        try:
            send(delivery.outgoing, self._settings, task_uuid=delivery.task_uuid)
        except DeliveryFailed as exc:
            self._record_failure(delivery, attempts, exc.message)
        except Exception as exc:  # a bug here must not leave the delivery stuck in flight
            logger.exception("Delivery %d crashed", delivery.id)
            self._record_failure(delivery, attempts, f"{type(exc).__name__}: {exc}")
        else:
            if not self._stopping.is_set():  # the store may be closed once stopping
                self._store.delivery_done(delivery.id, attempts=attempts)
            logger.info(
                "Delivered the %s of task %s (attempt %d)",
                delivery.outgoing.kind,
                delivery.task_uuid,
                attempts,
            )
        finally:
            with self._in_flight_lock:
                self._in_flight.pop(delivery.id, None)
            self._wake.set()

    def _record_failure(self, delivery: Delivery, attempts: int, error: str) -> None:
        if self._stopping.is_set():
            return  # stays pending: retried after the restart
        kind, task = delivery.outgoing.kind, delivery.task_uuid
        if attempts > self._settings.webhook_retries:
            logger.warning(
                "Giving up the %s of task %s after %d attempts: %s", kind, task, attempts, error
            )
            self._store.delivery_failed(delivery.id, attempts=attempts, error=error)
            return
        delay = backoff_seconds(attempts, self._backoff_base_s)
        logger.info("The %s of task %s failed (%s); retrying in %g s", kind, task, error, delay)
        self._store.delivery_retry(delivery.id, attempts=attempts, delay_s=delay, error=error)


def destination(url: str) -> str:
    """The ``host:port`` a delivery goes to (per-destination concurrency is counted by it)."""
    parts = urlsplit(url)
    return f"{(parts.hostname or '').lower()}:{parts.port or parts.scheme}"
