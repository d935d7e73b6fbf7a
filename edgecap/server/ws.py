"""The WebSocket at ``/v1``: the same tasks as REST, answered one frame per result.

A connection starts with an ``authentication`` message (required when the server has API keys)
and gets a ``connectionSessionUUID``; a connection that is not yet authenticated and sends
tasks without authentication, or a refused key, gets the error frames and is closed with code
1008. Tasks run concurrently; every result item is sent as its
own ``{"data": [item]}`` frame and every error as its own ``{"errors": [error]}`` frame.

Sessions outlive connections: a task still running when its connection drops sends its result
to the session's outbox, and a client that reconnects and authenticates with the same
``connectionSessionUUID`` (and the same key) receives those frames right after the
authentication reply. Sessions live in memory, for :data:`SESSION_TTL_S` after their last
connection closed; results themselves are durable and can always be fetched with getResponse.

Bounds: with API keys, a connection that sends no authentication within ``ws_auth_timeout_s``
is closed (1008), and until it authenticates a message may be at most 4 KB (an authentication
task); a key holds at most ``ws_sessions_per_key`` sessions; a connection runs at most
``ws_tasks_per_connection`` tasks at once — beyond that it stops reading (backpressure) for a
while, then refuses the task with ``rateLimitExceeded``. Tasks are visible only to the key of
the session that sent them. Per-message compression is off (``serve`` configures uvicorn), so a
small frame cannot inflate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections import deque
from collections.abc import MutableMapping
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from edgecap.errors import AuthError, EdgecapError, RateLimited
from edgecap.protocol import Reply, success_envelope
from edgecap.server.body import parse_body, too_large
from edgecap.server.handlers import Caller, Context, run_task, task_identity
from edgecap.server.schema import AuthenticationTask, parse_task

SESSION_TTL_S = 3600.0
SESSION_RETRY_AFTER_S = 60
UNAUTHENTICATED_MESSAGE_BYTES = 4096  # with keys, the first message is an authentication
TASK_WAIT_S = 10.0  # a full connection waits this long for a task to finish before refusing
TASK_RETRY_AFTER_S = 5
POLICY_VIOLATION = 1008  # close code for a connection refused for missing or invalid auth
OUTBOX_FRAMES = 1000  # frames kept for a disconnected session; the oldest are dropped first


SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)  # the socket closed under us


class Writer:
    """Writes frames to one socket, one at a time."""

    def __init__(self, socket: WebSocket) -> None:
        self.socket = socket
        self._lock = asyncio.Lock()

    async def write(self, frame: dict[str, Any]) -> None:
        async with self._lock:
            await self.socket.send_text(json.dumps(frame))


class WsSession:
    """A client's session: its current connection, if any, and the frames it has yet to get."""

    def __init__(self, identity: str) -> None:
        self.uuid = str(uuid.uuid4())
        self.identity = identity  # which API key opened it: only that key may resume it
        self.writer: Writer | None = None
        self.outbox: deque[dict[str, Any]] = deque(maxlen=OUTBOX_FRAMES)
        self.detached_at: float | None = time.monotonic()
        self._lock = asyncio.Lock()  # keeps frames in order across reconnections

    async def send(self, frame: dict[str, Any]) -> None:
        """Send now if connected, else keep the frame for when the client comes back."""
        async with self._lock:
            if self.writer is not None:
                try:
                    await self.writer.write(frame)
                    return
                except SEND_ERRORS:
                    self._detach()
            self.outbox.append(frame)

    async def attach(self, writer: Writer, greeting: dict[str, Any] | None) -> None:
        """Make ``writer`` the session's connection; send ``greeting``, then the outbox."""
        async with self._lock:
            self.writer, self.detached_at = writer, None
            try:
                if greeting is not None:
                    await writer.write(greeting)
                while self.outbox:
                    await writer.write(self.outbox[0])
                    self.outbox.popleft()
            except SEND_ERRORS:  # gone again; what is left waits for the next connection
                self._detach()

    def detach(self, writer: Writer) -> None:
        if self.writer is writer:
            self._detach()

    def _detach(self) -> None:
        self.writer, self.detached_at = None, time.monotonic()


class Sessions:
    """The WebSocket sessions of one app."""

    def __init__(self, per_key: int = 32, anonymous: int = 1024) -> None:
        self._by_uuid: dict[str, WsSession] = {}
        self.per_key = per_key
        self.anonymous = anonymous  # without keys every client shares one identity

    def open(self, identity: str, resume: str | None, *, keyed: bool = True) -> WsSession:
        """The session ``resume`` names if it exists and belongs to ``identity``, else a new one.

        A key holds at most ``per_key`` sessions: a new one replaces the key's longest
        disconnected session; if all are connected, RateLimited.
        """
        self._forget_stale()
        session = self._by_uuid.get(resume or "")
        if session is not None and session.identity == identity:
            return session
        mine = [s for s in self._by_uuid.values() if s.identity == identity]
        limit = self.per_key if keyed else self.anonymous
        if len(mine) >= limit:
            detached = [s for s in mine if s.detached_at is not None]
            if not detached:
                raise RateLimited(
                    f"This API key already has {limit} open WebSocket sessions. Close "
                    "one, or reuse a connection for more tasks.",
                    parameter="connectionSessionUUID",
                    retry_after=SESSION_RETRY_AFTER_S,
                )
            oldest = min(detached, key=lambda s: s.detached_at or 0.0)
            del self._by_uuid[oldest.uuid]
        session = WsSession(identity)
        self._by_uuid[session.uuid] = session
        return session

    def _forget_stale(self) -> None:
        cutoff = time.monotonic() - SESSION_TTL_S
        for key, session in list(self._by_uuid.items()):
            if session.detached_at is not None and session.detached_at < cutoff:
                del self._by_uuid[key]


class Connection:
    """One WebSocket connection: reads messages, runs their tasks, sends the frames."""

    def __init__(self, socket: WebSocket, ctx: Context, sessions: Sessions) -> None:
        self.socket = socket
        self.writer = Writer(socket)
        self.ctx = ctx
        self.sessions = sessions
        self.session: WsSession | None = None
        self.running: set[asyncio.Task[None]] = set()  # strong references to task coroutines
        base = socket.base_url
        http_scheme = "https" if base.scheme == "wss" else "http"
        self.caller = Caller(str(base.replace(scheme=http_scheme)).rstrip("/"), "ws")

    async def serve(self) -> None:
        await self.socket.accept()
        try:
            while True:
                message = await self._receive()
                if message is None:  # no authentication in time: hang up
                    with contextlib.suppress(*SEND_ERRORS):
                        await self.socket.close(code=POLICY_VIOLATION, reason="authentication")
                    break
                if message["type"] == "websocket.disconnect":
                    break
                refused = await self.on_message(message.get("text") or message.get("bytes") or b"")
                if refused and self.session is None:
                    # an unauthenticated client was refused: say so, then hang up
                    with contextlib.suppress(*SEND_ERRORS):
                        await self.socket.close(code=POLICY_VIOLATION, reason="authentication")
                    break
        except WebSocketDisconnect:
            pass
        finally:
            if self.session is not None:
                self.session.detach(self.writer)  # running tasks now fill its outbox

    async def _receive(self) -> MutableMapping[str, Any] | None:
        """The next message; None if an unauthenticated client stays silent too long."""
        if self.session is not None or not self.ctx.keys.required:
            message: MutableMapping[str, Any] = await self.socket.receive()
            return message
        try:
            return await asyncio.wait_for(
                self.socket.receive(), self.ctx.settings.ws_auth_timeout_s
            )
        except asyncio.TimeoutError:
            return None

    def _message_limit(self) -> int:
        """Before authentication (with keys), a message may only be small: an authentication."""
        if self.session is None and self.ctx.keys.required:
            return UNAUTHENTICATED_MESSAGE_BYTES
        return self.ctx.settings.max_body_bytes

    async def on_message(self, data: str | bytes) -> bool:
        """Handle one message; True if authentication was missing or failed in it."""
        try:
            limit = self._message_limit()
            if len(data) > limit:
                if limit == UNAUTHENTICATED_MESSAGE_BYTES:
                    self.ctx.keys.check(None)  # MissingApiKey: authenticate first
                raise too_large(limit)
            tasks = await parse_body(data)
        except AuthError as exc:
            await self.send_now(Reply.of_error(exc, task_type=None, task_uuid=None))
            return True
        except EdgecapError as exc:
            await self.send_now(Reply.of_error(exc, task_type=None, task_uuid=None))
            return False
        refused = False
        for raw in tasks:
            if isinstance(raw, dict) and raw.get("taskType") == "authentication":
                refused = not await self.authenticate(raw) or refused
            elif self.session is None and self.ctx.keys.required:
                await self.refuse(raw)
                refused = True
            else:
                try:
                    session = self.session or await self.anonymous_session()
                except EdgecapError as exc:  # too many sessions: this task is refused
                    task_type, task_uuid = task_identity(raw)
                    await self.send_now(
                        Reply.of_error(exc, task_type=task_type, task_uuid=task_uuid)
                    )
                    continue
                await self.start(raw, session)
        return refused

    async def start(self, raw: Any, session: WsSession) -> None:
        """Run a task in the background; with too many running, wait (the socket is not read
        meanwhile: backpressure), then refuse it with rateLimitExceeded."""
        limit = self.ctx.settings.ws_tasks_per_connection
        if len(self.running) >= limit:
            await asyncio.wait(
                set(self.running), timeout=TASK_WAIT_S, return_when=asyncio.FIRST_COMPLETED
            )
        if len(self.running) >= limit:
            task_type, task_uuid = task_identity(raw)
            exc = RateLimited(
                f"This connection already runs {limit} tasks (ws_tasks_per_connection); wait "
                "for their results before sending more.",
                retry_after=TASK_RETRY_AFTER_S,
            )
            await self.send_now(Reply.of_error(exc, task_type=task_type, task_uuid=task_uuid))
            return
        runner = asyncio.create_task(self.run(raw, session))
        self.running.add(runner)
        runner.add_done_callback(self.running.discard)

    async def authenticate(self, raw: dict[str, Any]) -> bool:
        """Open or resume the session; False (after an error frame) if the key is refused."""
        task_uuid = task_identity(raw)[1]
        try:
            task = parse_task(AuthenticationTask, raw)
            self.ctx.keys.check(task.api_key)
            session = self.sessions.open(
                self.ctx.keys.identity(task.api_key), task.connection_session_uuid
            )
        except EdgecapError as exc:
            await self.send_now(
                Reply.of_error(exc, task_type="authentication", task_uuid=task_uuid)
            )
            return False
        if self.session is not None and self.session is not session:
            self.session.detach(self.writer)
        self.session = session
        item: dict[str, Any] = {"taskType": "authentication", "connectionSessionUUID": session.uuid}
        if task_uuid is not None:
            item["taskUUID"] = task_uuid
        await session.attach(self.writer, success_envelope(item))
        return True

    async def anonymous_session(self) -> WsSession:
        """Without API keys, tasks may come before (or without) an authentication message."""
        self.session = self.sessions.open(self.ctx.keys.identity(None), None, keyed=False)
        await self.session.attach(self.writer, None)
        return self.session

    async def refuse(self, raw: Any) -> None:
        task_type, task_uuid = task_identity(raw)
        try:
            self.ctx.keys.check(None)
        except EdgecapError as exc:
            await self.send_now(Reply.of_error(exc, task_type=task_type, task_uuid=task_uuid))

    async def run(self, raw: Any, session: WsSession) -> None:
        owner = session.identity if self.ctx.keys.required else None
        reply = await run_task(raw, self.ctx, dataclasses.replace(self.caller, owner=owner))
        for frame in reply.frames():
            await session.send(frame)

    async def send_now(self, reply: Reply) -> None:
        """Frames that belong to this connection only (no session, e.g. a failed login)."""
        for frame in reply.frames():
            with contextlib.suppress(*SEND_ERRORS):
                await self.writer.write(frame)
