"""Loopback HTTP servers: ``serve`` runs any handler on a free 127.0.0.1 port; ``Receiver``
takes webhooks and uploads; ``image_host`` serves fixed image bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STOP_TIMEOUT_S = 10.0


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps test output quiet."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def start(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A server for ``handler`` on a free loopback port, serving from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server, thread


def stop(server: ThreadingHTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(STOP_TIMEOUT_S)


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on 127.0.0.1 for the duration of the block."""
    server, thread = start(handler)
    try:
        yield server
    finally:
        stop(server, thread)


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers started in subprocesses)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def base_url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict, compare=False)


class Receiver:
    """A local HTTP server that answers a scripted list of statuses (then 200) and records
    every complete POST and PUT it gets (one cut short by a dying sender is not a request).
    Call ``close()`` when done."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[Received] = []
        receiver = self

        class Handler(QuietHandler):
            def _answer(self) -> None:
                expected = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(expected)
                if len(body) < expected:  # the sender died mid-request: torn, not a delivery
                    return
                receiver.received.append(
                    Received(
                        self.command,
                        self.path,
                        self.headers["Content-Type"],
                        body,
                        dict(self.headers.items()),
                    )
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _answer

        self.server, self._thread = start(Handler)

    def url(self, path: str) -> str:
        return base_url(self.server) + path

    def close(self) -> None:
        stop(self.server, self._thread)


@dataclass
class ImageHost:
    """Serves fixed bytes at every path; counts the requests."""

    server: ThreadingHTTPServer
    requests: list[str]

    def url(self, path: str = "/picture.png") -> str:
        return base_url(self.server) + path


@contextmanager
def image_host(body: bytes, content_type: str = "image/png") -> Iterator[ImageHost]:
    requests: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve(Handler) as server:
        yield ImageHost(server, requests)
