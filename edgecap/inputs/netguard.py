"""URL policy for every outbound request (the fetching itself: :mod:`edgecap.inputs.fetching`).

Anything a client can name — an image URL, a ``webhookURL``, an ``uploadEndpoint`` — passes
through :func:`check_url` (or :func:`resolve_url`, which also returns the vetted addresses).
The policy: only http and https; the host is resolved and *every* address it resolves to must be
public, unless the host, or a CIDR range covering the address, is in ``settings.url_allowlist``.
Some addresses are never reachable, allow-list or not: unspecified, multicast, reserved and the
cloud metadata endpoints. ``settings.offline`` refuses everything.

DNS rebinding: a host could resolve to a public address when checked and a private one when
connected. ``fetching.fetch`` and ``fetching.deliver`` avoid that by connecting to the address they
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

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

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


def _is_ip_literal(host: str) -> bool:
    """Whether the URL named an address itself (``10.0.0.1``, ``[::1]``, ``2130706433``)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.isdigit()
    return True


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
