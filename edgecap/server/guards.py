"""Who may talk to the server at all, checked before any route runs (an ASGI middleware).

- **Host** (DNS rebinding): the ``Host`` header must be an IP literal, a loopback name, the
  bound host, or one of ``settings.allowed_hosts``. A web page on ``evil.example`` whose name
  is re-pointed at 127.0.0.1 sends ``Host: evil.example`` and is refused (421).
- **Origin** (cross-site requests, WebSocket hijacking): a browser always sends ``Origin`` on
  cross-origin requests and WebSocket handshakes. It must be the server's own origin (same
  scheme, host and port as the request) or one of ``settings.allowed_origins`` (403).
  Clients that are not browsers (curl, the Runware SDKs) send no Origin and are unaffected.
- **Content-Type**: ``POST`` bodies must be JSON (``application/json`` or ``*/*+json``), which a
  cross-site ``<form>`` or a CORS "simple request" cannot send (415).
- Every response carries ``X-Content-Type-Options: nosniff``.

Refusals are the API's error object; a refused WebSocket is closed before it is accepted.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from edgecap.config import Settings
from edgecap.errors import EdgecapError
from edgecap.protocol import error_object
from edgecap.server.auth import LOOPBACK_NAMES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
JSON_TYPES = ("application/json",)
NOSNIFF = (b"x-content-type-options", b"nosniff")


class Refused(EdgecapError):
    """A request refused before it reached a route."""


class Guards:
    """The checks of the module docstring around ``app``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = {settings.host.lower().strip("[]"), *LOOPBACK_NAMES}
        self.hosts.update(h.lower() for h in settings.allowed_hosts)
        self.origins = {o.lower().rstrip("/") for o in settings.allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self.check(scope, headers)
        if refusal is not None:
            await _refuse(scope, send, refusal)
            return
        await self.app(scope, receive, _with_nosniff(send))

    def check(self, scope: Scope, headers: dict[str, str]) -> Refused | None:
        """The first rule the request breaks, or None."""
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return Refused(
                f"This server does not answer to the host name {host[:80]!r}. Use its address "
                "(e.g. 127.0.0.1), or add the name to allowed_hosts (EDGECAP_ALLOWED_HOSTS).",
                code="invalidParameter",
                status=421,
                parameter="Host",
            )
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host, scope):
            return Refused(
                f"Requests from the web page origin {origin[:80]!r} are not allowed: only this "
                "server's own pages may call it from a browser. Add the origin to "
                "allowed_origins (EDGECAP_ALLOWED_ORIGINS) if you trust it.",
                code="invalidParameter",
                status=403,
                parameter="Origin",
            )
        if scope["type"] == "http" and scope["method"] == "POST":
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in JSON_TYPES and not content_type.endswith("+json"):
                return Refused(
                    f"POST bodies must be JSON; the Content-Type is {content_type or 'missing'}"
                    ". Send the header 'Content-Type: application/json'.",
                    code="invalidParameter",
                    status=415,
                    parameter="Content-Type",
                )
        return None

    def host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        if name in self.hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True  # an IP literal cannot be re-pointed by DNS

    def origin_allowed(self, origin: str, host: str, scope: Scope) -> bool:
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        secure = scope.get("scheme") in ("https", "wss")
        own_scheme = "https" if secure else "http"
        return parts.scheme == own_scheme and parts.netloc == host.lower()


def _host_name(host: str) -> str:
    """The name part of a Host header: ``[::1]:8080`` → ``::1``, ``a.b:80`` → ``a.b``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _with_nosniff(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), NOSNIFF]
        await send(message)

    return sending


async def _refuse(scope: Scope, send: Send, refusal: Refused) -> None:
    if scope["type"] == "websocket":  # before accept: the handshake fails with HTTP 403
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.parameter or ""})
        return
    body = json.dumps({"errors": [error_object(refusal, task_type=None, task_uuid=None)]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                NOSNIFF,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
