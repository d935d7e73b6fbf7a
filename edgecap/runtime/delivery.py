"""Deliver finished tasks where the client asked: ``webhookURL`` (POST), ``uploadEndpoint`` (PUT).

When a task finishes, :func:`outgoing_for` turns its envelope into deliveries, which the
service writes to the store's outbox in the same transaction as the result. A
:class:`Deliverer` sends them from its own threads, so a slow or dead receiver never holds up
inference, and pending deliveries survive a restart (at-least-once: a delivery cut off by a
crash is sent again).

A delivery succeeds on a 2xx answer. Anything else (another status, a refused connection, a
timeout, a URL the network policy refuses) is retried with exponential backoff, at most
``settings.webhook_retries`` times, and then marked failed. Each attempt re-checks the URL with
:mod:`edgecap.inputs.netguard` and connects only to the addresses it vetted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from edgecap.config import Settings
from edgecap.errors import DeliveryFailed, EdgecapError
from edgecap.inputs import netguard
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


def send(outgoing: Outgoing, settings: Settings) -> None:
    """Make one delivery attempt; raises :class:`DeliveryFailed` unless the answer is 2xx."""
    method, purpose = METHODS[outgoing.kind]
    try:
        checked = netguard.resolve_url(outgoing.url, settings, purpose=purpose)
        # Streamed, and closed unread: only the status matters, so a receiver answering with
        # a huge or trickling body costs neither memory nor a sender thread.
        with (
            httpx.Client(timeout=settings.fetch_timeout_s, trust_env=False) as client,
            contextlib.closing(
                netguard.send_pinned(
                    client,
                    checked,
                    method,
                    content=outgoing.body,
                    headers={"Content-Type": outgoing.content_type, "User-Agent": USER_AGENT},
                    stream=True,
                )
            ) as response,
        ):
            status, success = response.status_code, response.is_success
    except EdgecapError as exc:
        raise DeliveryFailed(exc.message, parameter=purpose) from exc
    except httpx.HTTPError as exc:
        raise DeliveryFailed(
            f"{method} {outgoing.url} failed: {exc or type(exc).__name__}", parameter=purpose
        ) from exc
    if not success:
        raise DeliveryFailed(f"{method} {outgoing.url} answered HTTP {status}", parameter=purpose)


class Deliverer:
    """Sends the outbox in the background: a scheduler thread and a few sender threads."""

    def __init__(
        self, store: TaskStore, settings: Settings, *, backoff_base_s: float = BACKOFF_BASE_S
    ) -> None:
        self._store = store
        self._settings = settings
        self._backoff_base_s = backoff_base_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: set[int] = set()
        self._in_flight_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="edgecap-delivery")
        self._thread = threading.Thread(
            target=self._schedule_loop, name="edgecap-delivery-scheduler", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (new deliveries were queued)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop scheduling; attempts in flight finish (each is bounded by fetch_timeout_s)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _schedule_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._dispatch_due()
            except Exception:  # a broken store must not end delivery for good
                logger.exception("Delivery scheduling failed; retrying shortly")
            self._wake.wait(self._idle_seconds())
            self._wake.clear()

    def _dispatch_due(self) -> None:
        assert self._pool is not None
        with self._in_flight_lock:
            busy = tuple(self._in_flight)
        free = SENDERS - len(busy)
        if free <= 0:
            return
        for delivery in self._store.due_deliveries(free, exclude=busy):
            with self._in_flight_lock:
                self._in_flight.add(delivery.id)
            self._pool.submit(self._attempt, delivery)

    def _idle_seconds(self) -> float:
        due_at = self._store.next_delivery_at()
        if due_at is None:
            return IDLE_WAKE_S
        return min(max(due_at - self._store.clock(), 0.05), IDLE_WAKE_S)

    def _attempt(self, delivery: Delivery) -> None:
        attempts = delivery.attempts + 1
        try:
            send(delivery.outgoing, self._settings)
        except DeliveryFailed as exc:
            self._record_failure(delivery, attempts, exc.message)
        except Exception as exc:  # a bug here must not leave the delivery stuck in flight
            logger.exception("Delivery %d crashed", delivery.id)
            self._record_failure(delivery, attempts, f"{type(exc).__name__}: {exc}")
        else:
            self._store.delivery_done(delivery.id, attempts=attempts)
            logger.info(
                "Delivered the %s of task %s (attempt %d)",
                delivery.outgoing.kind,
                delivery.task_uuid,
                attempts,
            )
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(delivery.id)
            self._wake.set()

    def _record_failure(self, delivery: Delivery, attempts: int, error: str) -> None:
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
