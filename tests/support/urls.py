"""The API's loopback addresses of a test server, from its port."""

from __future__ import annotations


class LoopbackUrls:
    """``url`` (REST) and ``ws_url`` (WebSocket) of a server listening on ``self.port``."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"
