"""uvicorn's h11 protocol with a deadline for each request's request line and headers.

uvicorn times only the idle gap after a response (``timeout_keep_alive``), and any byte that
arrives cancels that timer: a client sending one header byte every few seconds (slowloris), or
connecting and sending nothing, holds its connection — one of ``limit_concurrency`` — for ever.
Here every connection must deliver a request's line and headers within ``header_timeout_s``,
counted from the connection's start and, on a kept-alive connection, from the end of the previous
response. Past the deadline a partly received request is answered 408 (the API's error object)
and the connection closed; a connection that sent nothing is closed without an answer, as an
idle keep-alive one is. Request bodies have their own deadline (``body_timeout_s``, read by the
routes); a WebSocket's handshake is a request like any other, and after the upgrade the socket
is bounded by ``ws_auth_timeout_s`` and uvicorn's pings.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgecap.errors import BodyTimeout
from edgecap.protocol import Reply

logger = logging.getLogger(__name__)


def timeout_response(timeout_s: float) -> bytes:
    """The whole 408 answer (status line, headers, JSON error envelope) sent on the deadline."""
    error = BodyTimeout(
        f"The request line and headers did not arrive within {timeout_s:g} s "
        "(header_timeout_s / EDGECAP_HEADER_TIMEOUT_S). Check the connection.",
        parameter="headers",
    )
    reply = Reply.of_error(error, task_type=None, task_uuid=None)
    body = json.dumps(reply.body(), separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        "x-content-type-options: nosniff\r\n"
        "connection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeaderDeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` closing connections whose request headers do not arrive in time.

    Use :func:`header_deadline_protocol` for a class with a given deadline.
    """

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """Parse what arrived; a new request (its headers complete) stops the clock."""
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:
            self._cancel_header_deadline()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_header_deadline()  # the headers are in; the socket has its own bounds
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        """Start the next request's clock, then let uvicorn go on (it may parse a pipelined
        request at once, which stops the clock again)."""
        if not self.transport.is_closing():
            self._arm_header_deadline()
        super().on_response_complete()

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        pending, _ = self.conn.trailing_data
        started = self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE
        if started and pending:
            self.transport.write(timeout_response(self.header_timeout_s))
        logger.info(
            "closing a connection from %s: no complete request headers within %g s",
            self.client[0] if self.client else "?",
            self.header_timeout_s,
        )
        self.transport.close()


def header_deadline_protocol(timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)`` for a ``timeout_s`` deadline."""
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": timeout_s}
    )
