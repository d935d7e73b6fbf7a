"""URL policy for every outbound request, and a guarded fetch for image URLs.

Anything a client can name — an image URL, a ``webhookURL``, an ``uploadEndpoint`` — passes
through :func:`check_url` (or :func:`resolve_url`, which also returns the vetted addresses).
The policy: only http and https; the host is resolved and *every* address it resolves to must be
public, unless the host, or a CIDR range covering the address, is in ``settings.url_allowlist``.
Some addresses are never reachable, allow-list or not: unspecified, multicast, reserved and the
cloud metadata endpoints. ``settings.offline`` refuses everything.

DNS rebinding: a host could resolve to a public address when checked and a private one when
connected. :func:`fetch` and :func:`deliver` avoid that by connecting to the address they
checked (the URL's host is replaced by the IP; the ``Host`` header and the TLS server name keep
the real name, so virtual hosts and certificate checks work as before).

Every exchange has a total deadline (``fetch_timeout_s``: connect + headers + body), enforced
by cancelling it on a private event loop, and image fetches take one of
``max_concurrent_fetches`` process-wide slots. Image GETs are opened by ``url_allowlist``;
webhooks and upload PUTs by ``delivery_allowlist``.

Proxy environment variables are ignored (``trust_env=False``): a proxy would resolve the host
itself and defeat the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin

import httpx

from edgecap.config import Settings
from edgecap.errors import DownloadFailed

logger = logging.getLogger(__name__)

DELIVERY_PURPOSES = frozenset({"webhookURL", "uploadEndpoint"})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Instance-metadata services hand out cloud credentials; they are never a legitimate target.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux routes these to the local host
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, not public

# (test, what the address is, may the allow-list open it?) — the first matching rule decides.
ADDRESS_RULES: tuple[tuple[Callable[[IPAddress], bool], str, bool], ...] = (
    (lambda ip: ip in METADATA_ADDRESSES, "a cloud metadata address", False),
    (lambda ip: ip.is_unspecified or ip in THIS_NETWORK, "an unspecified address", False),
    (lambda ip: ip.is_multicast, "a multicast address", False),
    (lambda ip: ip.is_loopback, "a loopback address", True),
    (lambda ip: ip.is_link_local, "a link-local address", True),
    (lambda ip: ip.is_reserved, "a reserved address", False),
    (lambda ip: ip.is_private or ip in SHARED_ADDRESS_SPACE, "a private address", True),
)


@dataclass(frozen=True)
class Allowlist:
    """Host names and IP networks that may be contacted although private or loopback."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> Allowlist:
        """Read ``settings.url_allowlist``: each entry is an IP, a CIDR range or a host name."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e.strip() for e in entries):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower())
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, ip: IPAddress) -> bool:
        return host.lower() in self.hosts or any(ip in net for net in self.networks)


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed the policy, with the addresses its host resolved to."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    def pinned_url(self, ip: IPAddress) -> httpx.URL:
        """The URL with its host replaced by ``ip``, one of the vetted addresses."""
        return self.url.copy_with(host=str(ip))

    @property
    def headers(self) -> dict[str, str]:
        """The ``Host`` header that keeps virtual hosting working on a pinned URL."""
        return {"Host": self.url.netloc.decode("ascii")}

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions: the TLS server name, for the certificate check."""
        return {"sni_hostname": self.url.host}


def allowlist_entries(settings: Settings, purpose: str | None) -> list[str]:
    """Deliveries (webhookURL, uploadEndpoint) have their own allow-list, image GETs theirs."""
    return settings.delivery_allowlist if purpose in DELIVERY_PURPOSES else settings.url_allowlist


def allowlist_name(purpose: str | None) -> str:
    return "delivery_allowlist" if purpose in DELIVERY_PURPOSES else "url_allowlist"


def check_url(url: str, settings: Settings, *, purpose: str) -> None:
    """Raise :class:`DownloadFailed` unless the policy allows a request to ``url``.

    ``purpose`` names the request parameter the URL came from (``"webhookURL"``, ...); messages
    quote it and the error's ``parameter`` is set to it.
    """
    resolve_url(url, settings, purpose=purpose)


def resolve_url(
    url: str | httpx.URL, settings: Settings, *, purpose: str | None = None
) -> CheckedURL:
    """Check offline mode, the scheme and every address the host resolves to."""
    if settings.offline:
        raise DownloadFailed(
            f"Refusing to fetch {_label(purpose, url)}: offline mode is on (--offline / "
            "EDGECAP_OFFLINE=1). Pass images as a file, base64 or data URI instead, or turn "
            "offline mode off.",
            parameter=purpose,
        )
    parsed = _parse(url, purpose)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = resolve_host(parsed.host, port, purpose=purpose)
    allowlist = Allowlist.parse(allowlist_entries(settings, purpose))
    for ip in addresses:
        check_address(ip, parsed.host, allowlist, purpose=purpose)
    return CheckedURL(parsed, addresses)


def resolve_host(host: str, port: int, *, purpose: str | None = None) -> tuple[IPAddress, ...]:
    """Every address ``host`` resolves to, in resolver order (IPv4-mapped IPv6 unwrapped)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DownloadFailed(
            f"Could not resolve the host {host!r} ({exc}). Check the URL and your network.",
            parameter=purpose,
        ) from exc
    found: dict[IPAddress, None] = {}  # an ordered set
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone id
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        found[ip] = None
    if not found:
        raise DownloadFailed(f"The host {host!r} has no address.", parameter=purpose)
    return tuple(found)


def check_address(
    ip: IPAddress, host: str, allowlist: Allowlist, *, purpose: str | None = None
) -> None:
    """Raise :class:`DownloadFailed` if ``ip`` (which ``host`` resolved to) is off limits.

    For a host *name* the message says only that it is not allowed: naming the address it
    resolves to would let clients map the server's network through error messages (the
    details go to the log). For an IP literal the client already knows the address.
    """
    for test, what, can_allow in ADDRESS_RULES:
        if not test(ip):
            continue
        if can_allow and allowlist.allows(host, ip):
            return
        listed = allowlist_name(purpose)
        if not _is_ip_literal(host):
            logger.info("Refused %s: %s resolves to %s, %s", purpose, host, ip, what)
            raise DownloadFailed(
                f"Refusing {purpose or 'the URL'}: the host {host} is not allowed. If you "
                f"trust it, add it to {listed}.",
                parameter=purpose,
            )
        fix = (
            f"If you trust it, add {host} to {listed} (e.g. EDGECAP_{listed.upper()}='[\"{ip}\"]')."
            if can_allow
            else "Such addresses are never allowed."
        )
        raise DownloadFailed(
            f"Refusing {purpose or 'the URL'}: {host}, which is {what}, is not allowed. {fix}",
            parameter=purpose,
        )


T = TypeVar("T")


def _is_ip_literal(host: str) -> bool:
    """Whether the URL named an address itself (``10.0.0.1``, ``[::1]``, ``2130706433``)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.isdigit()
    return True


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


def _parse(url: str | httpx.URL, purpose: str | None) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise DownloadFailed(
            f"{_label(purpose, url)} is not a valid URL: {exc}.", parameter=purpose
        ) from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise DownloadFailed(
            f"{_label(purpose, url)} uses the scheme {parsed.scheme or '(none)'!r}; only http:// "
            "and https:// URLs can be fetched.",
            parameter=purpose,
        )
    if not parsed.host:
        raise DownloadFailed(f"{_label(purpose, url)} has no host name.", parameter=purpose)
    return parsed


def _label(purpose: str | None, url: str | httpx.URL) -> str:
    """How messages name the URL: ``webhookURL 'http://…'`` or just the quoted URL."""
    shown = str(url)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return f"{purpose} {shown!r}" if purpose else repr(shown)
