"""Fetching images and delivering webhooks/uploads under the URL policy of
:mod:`edgecap.inputs.netguard`, each exchange within one total deadline.

Every hop is resolved and checked by the policy, then connected to the address it vetted
(``send_pinned``); the whole exchange — connects, headers, body, redirects — is bounded by
``settings.fetch_timeout_s``, and at most ``settings.max_concurrent_fetches`` run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar
from urllib.parse import urljoin

import httpx

from edgecap.config import Settings
from edgecap.errors import DownloadFailed
from edgecap.inputs.netguard import REDIRECT_STATUSES, CheckedURL, _label, resolve_url

T = TypeVar("T")


def fetch(
    url: str,
    settings: Settings,
    *,
    max_bytes: int,
    accept: tuple[str, ...] = ("image/",),
    purpose: str | None = None,
) -> bytes:
    """GET ``url`` under the policy and return its body, at most ``max_bytes`` long.

    Redirects are followed by hand, up to ``settings.fetch_max_redirects``, and every hop is
    checked again. The whole fetch — connects, headers, body, every hop — must finish within
    ``settings.fetch_timeout_s`` (a peer trickling one byte a second is cut off), and at most
    ``settings.max_concurrent_fetches`` fetches run at once in the process. A response whose
    Content-Type starts with none of ``accept`` is refused — except
    ``application/octet-stream`` or no Content-Type at all: unlabelled bytes, the caller judges.
    """
    with fetch_slot(settings, purpose):
        return within_deadline(
            _fetch(url, settings, max_bytes, accept, purpose),
            settings.fetch_timeout_s,
            lambda: _timeout(str(url), settings, purpose),
        )


def within_deadline(work: Awaitable[T], seconds: float, on_timeout: Callable[[], Exception]) -> T:
    """Run ``work`` on a private event loop, cancelled after ``seconds`` in total.

    For blocking callers (worker threads): asyncio cancellation interrupts a request in any
    phase, which per-read socket timeouts cannot do against a trickling peer.
    """

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(work, seconds)
        except asyncio.TimeoutError:
            raise on_timeout() from None

    return asyncio.run(bounded())


@functools.cache
def _fetch_slots(count: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(count)


@contextlib.contextmanager
def fetch_slot(settings: Settings, purpose: str | None) -> Iterator[None]:
    """One of the process's ``max_concurrent_fetches`` slots, waiting at most fetch_timeout_s."""
    slots = _fetch_slots(settings.max_concurrent_fetches)
    if not slots.acquire(timeout=settings.fetch_timeout_s):
        raise DownloadFailed(
            f"{settings.max_concurrent_fetches} downloads are already in flight and none "
            f"finished within {settings.fetch_timeout_s:g} s. Try again later, or send the "
            "image inline.",
            parameter=purpose,
        )
    try:
        yield
    finally:
        slots.release()


def deliver(
    url: str,
    settings: Settings,
    method: str,
    *,
    content: bytes,
    headers: dict[str, str],
    purpose: str,
) -> int:
    """Send one request (a webhook POST, an upload PUT) under the policy; its status code.

    The answer's body is not read. Connect, send and headers must finish within
    ``settings.fetch_timeout_s`` in total; raises DownloadFailed (policy, timeout) or
    httpx.HTTPError.
    """

    async def exchange() -> int:
        checked = resolve_url(url, settings, purpose=purpose)
        async with (
            httpx.AsyncClient(timeout=settings.fetch_timeout_s, trust_env=False) as client,
            _closing(
                await send_pinned(client, checked, method, content=content, headers=headers)
            ) as response,
        ):
            return response.status_code

    return within_deadline(
        exchange(), settings.fetch_timeout_s, lambda: _timeout(url, settings, purpose)
    )


@contextlib.asynccontextmanager
async def _closing(response: httpx.Response) -> AsyncIterator[httpx.Response]:
    try:
        yield response
    finally:
        await response.aclose()


async def _fetch(
    url: str, settings: Settings, max_bytes: int, accept: tuple[str, ...], purpose: str | None
) -> bytes:
    current: str | httpx.URL = url
    for _hop in range(settings.fetch_max_redirects + 1):
        checked = resolve_url(current, settings, purpose=purpose)
        answer = await _get_once(checked, settings, max_bytes, accept, purpose)
        if isinstance(answer, bytes):
            return answer
        current = urljoin(str(checked.url), answer)
    raise DownloadFailed(
        f"{_label(purpose, url)} redirected more than {settings.fetch_max_redirects} times. "
        "Use the final URL, or raise fetch_max_redirects (EDGECAP_FETCH_MAX_REDIRECTS).",
        parameter=purpose,
    )


async def send_pinned(
    client: httpx.AsyncClient,
    checked: CheckedURL,
    method: str,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send one request to the vetted addresses of ``checked``, in turn until one connects.

    The response is streamed (the caller closes it). Redirects are not followed: re-check a
    ``Location`` with :func:`resolve_url` first.
    """
    error: httpx.ConnectError | None = None
    for ip in checked.addresses:
        request = client.build_request(
            method,
            checked.pinned_url(ip),
            content=content,
            headers={**(headers or {}), **checked.headers},
            extensions=checked.extensions,
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:  # e.g. "localhost" is ::1 first, served on 127.0.0.1
            error = exc
    raise error or DownloadFailed(f"{checked.url} has no address to connect to.")


async def _get_once(
    checked: CheckedURL,
    settings: Settings,
    max_bytes: int,
    accept: tuple[str, ...],
    purpose: str | None,
) -> bytes | str:
    """One hop: the body, or the ``Location`` a redirect points to."""
    shown = str(checked.url)
    try:
        # A fresh client per hop: a pooled TLS connection must not serve another host name.
        async with (
            httpx.AsyncClient(timeout=settings.fetch_timeout_s, trust_env=False) as client,
            _closing(await send_pinned(client, checked, "GET")) as response,
        ):
            if response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise DownloadFailed(
                        f"{shown} redirected without a Location header.", parameter=purpose
                    )
                return location
            if not response.is_success:
                raise DownloadFailed(
                    f"{shown} answered HTTP {response.status_code}; check that the URL is right "
                    "and readable without logging in.",
                    parameter=purpose,
                )
            _check_content_type(response, accept, shown, purpose)
            return await _read_capped(response, max_bytes, shown, purpose)
    except httpx.TimeoutException as exc:
        raise _timeout(shown, settings, purpose) from exc
    except httpx.HTTPError as exc:
        raise DownloadFailed(
            f"Could not download {shown}: {exc or type(exc).__name__}. Check the URL and that "
            "the server is reachable.",
            parameter=purpose,
        ) from exc


def _check_content_type(
    response: httpx.Response, accept: tuple[str, ...], shown: str, purpose: str | None
) -> None:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("", "application/octet-stream") or content_type.startswith(accept):
        return
    hint = (
        " — a web page, not the file itself; link to the image directly"
        if content_type == "text/html"
        else ""
    )
    raise DownloadFailed(
        f"{shown} returned Content-Type {content_type!r}{hint}. Expected {' or '.join(accept)}.",
        parameter=purpose,
    )


async def _read_capped(
    response: httpx.Response, max_bytes: int, shown: str, purpose: str | None
) -> bytes:
    too_big = DownloadFailed(
        f"{shown} is larger than the limit of {max_bytes:,} bytes. Use a "
        "smaller file, or raise max_image_bytes (EDGECAP_MAX_IMAGE_BYTES) for image URLs.",
        parameter=purpose,
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise too_big
    return bytes(body)


def _timeout(shown: str, settings: Settings, purpose: str | None) -> DownloadFailed:
    return DownloadFailed(
        f"Downloading {shown} took longer than {settings.fetch_timeout_s:g} s. Try again, "
        "use a faster host, or raise fetch_timeout_s (EDGECAP_FETCH_TIMEOUT_S).",
        parameter=purpose,
    )
