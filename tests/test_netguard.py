"""URL policy and guarded fetch, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from edgecap.config import Settings
from edgecap.errors import DownloadFailed
from edgecap.inputs.fetching import fetch
from edgecap.inputs.netguard import check_url, resolve_url
from tests.support.http import QuietHandler, base_url, serve

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100  # content is not inspected here


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(home=tmp_path, **overrides)


# --------------------------------------------------------------------------- a local server

Route = Callable[[BaseHTTPRequestHandler], None]


def reply(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return route


def echo_host(handler: BaseHTTPRequestHandler) -> None:
    reply(body=handler.headers["Host"].encode(), headers={"Content-Type": "image/png"})(handler)


def endless(handler: BaseHTTPRequestHandler) -> None:
    """A body without Content-Length that goes on far past any cap (closed by the client)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.end_headers()
    try:
        for _ in range(1000):
            handler.wfile.write(b"x" * 1024)
    except OSError:
        pass


def slow(handler: BaseHTTPRequestHandler) -> None:
    time.sleep(1.0)
    reply(body=PNG_BYTES, headers={"Content-Type": "image/png"})(handler)


ROUTES: dict[str, Route] = {
    "/img.png": reply(body=PNG_BYTES, headers={"Content-Type": "image/png"}),
    "/octet": reply(body=PNG_BYTES, headers={"Content-Type": "application/octet-stream"}),
    "/untyped": reply(body=PNG_BYTES),
    "/page.html": reply(
        body=b"<html></html>", headers={"Content-Type": "text/html; charset=utf-8"}
    ),
    "/json": reply(body=b"{}", headers={"Content-Type": "application/json"}),
    "/missing": reply(404),
    "/host": echo_host,
    "/big-declared": reply(
        body=b"", headers={"Content-Type": "image/png", "Content-Length": "999999999"}
    ),
    "/exactly-100": reply(body=b"y" * 100, headers={"Content-Type": "image/png"}),
    "/endless": endless,
    "/slow": slow,
    "/to-img": reply(302, headers={"Location": "/img.png"}),
    "/to-metadata": reply(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
    "/to-private": reply(301, headers={"Location": "http://10.1.2.3/cat.png"}),
    "/loop": reply(307, headers={"Location": "/loop"}),
    "/no-location": reply(302),
}


class Handler(QuietHandler):
    def do_GET(self) -> None:
        ROUTES.get(self.path, reply(404))(self)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(Handler) as httpd:
        yield base_url(httpd)


@pytest.fixture
def allowed(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, url_allowlist=["127.0.0.1"], fetch_timeout_s=5.0)


# --------------------------------------------------------------------------- check_url


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/", "example.com/cat.png"],
)
def test_only_http_and_https_schemes(tmp_path: Path, url: str) -> None:
    with pytest.raises(DownloadFailed, match=r"only http:// and https://") as info:
        check_url(url, make_settings(tmp_path), purpose="webhookURL")
    assert info.value.parameter == "webhookURL"
    assert info.value.code == "downloadFailed"


def test_public_address_passes(tmp_path: Path) -> None:
    checked = resolve_url("https://93.184.216.34:8443/a.png", make_settings(tmp_path))
    assert [str(ip) for ip in checked.addresses] == ["93.184.216.34"]


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped IPv6 is unwrapped
        ("http://2130706433/", "loopback"),  # 127.0.0.1 written as one decimal number
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://100.64.0.1/", "private"),
        ("http://[fd12::1]/", "private"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
    ],
)
def test_private_ranges_refused_by_default(tmp_path: Path, url: str, what: str) -> None:
    with pytest.raises(DownloadFailed, match=rf"which is a {what} address.*delivery_allowlist"):
        check_url(url, make_settings(tmp_path), purpose="uploadEndpoint")


@pytest.mark.parametrize(
    ("url", "entry"),
    [
        ("http://127.0.0.1:9/", "127.0.0.1"),
        ("http://127.0.0.1:9/", "127.0.0.0/8"),
        ("http://10.9.8.7/", "10.0.0.0/8"),
        ("http://169.254.1.1/", "169.254.0.0/16"),
        ("http://[::1]/", "::1"),
    ],
)
def test_allowlist_opens_private_ranges(tmp_path: Path, url: str, entry: str) -> None:
    check_url(url, make_settings(tmp_path, delivery_allowlist=[entry]), purpose="webhookURL")
    with pytest.raises(DownloadFailed, match="delivery_allowlist"):  # the image list does not
        check_url(url, make_settings(tmp_path, url_allowlist=[entry]), purpose="webhookURL")
    check_url(url, make_settings(tmp_path, url_allowlist=[entry]), purpose="inputImage")


def test_allowlisted_host_name_opens_all_its_addresses(tmp_path: Path) -> None:
    # "localhost" resolves to 127.0.0.1 and often ::1 as well; the name covers both.
    check_url(
        "http://LOCALHOST:1/", make_settings(tmp_path, url_allowlist=["localhost"]), purpose="x"
    )
    with pytest.raises(DownloadFailed, match=r"the host localhost is not allowed") as info:
        check_url("http://localhost:1/", make_settings(tmp_path), purpose="x")
    assert "127.0.0.1" not in info.value.message and "loopback" not in info.value.message


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "a cloud metadata address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://0.0.0.0:8080/", "an unspecified address"),
        ("http://0.1.2.3/", "an unspecified address"),
        ("http://240.0.0.1/", "a reserved address"),
        ("http://255.255.255.255/", "a reserved address"),
    ],
)
def test_never_allowed_even_when_allowlisted(tmp_path: Path, url: str, what: str) -> None:
    settings = make_settings(tmp_path, url_allowlist=["0.0.0.0/0", "::/0"])
    with pytest.raises(DownloadFailed, match=rf"which is {what}, is not allowed. Such addresses"):
        check_url(url, settings, purpose="webhookURL")


def test_every_resolved_address_must_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolves to a public and a private address is refused (rebinding setups)."""

    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.0.10", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(DownloadFailed, match=r"the host two-faced\.test is not allowed") as info:
        check_url("http://two-faced.test/a.png", make_settings(tmp_path), purpose="webhookURL")
    # issue 9, finding 12: no DNS oracle — the message does not say where the name resolves
    assert "192.168" not in info.value.message and "private" not in info.value.message


def test_unresolvable_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(DownloadFailed, match=r"Could not resolve the host 'nowhere.test'"):
        check_url("http://nowhere.test/", make_settings(tmp_path), purpose="webhookURL")


def test_offline_refuses_everything(tmp_path: Path, server: str) -> None:
    settings = make_settings(tmp_path, offline=True, url_allowlist=["127.0.0.1"])
    for call in (
        lambda: check_url("https://93.184.216.34/", settings, purpose="webhookURL"),
        lambda: fetch(f"{server}/img.png", settings, max_bytes=1000),
    ):
        with pytest.raises(
            DownloadFailed, match=r"offline mode is on \(--offline / EDGECAP_OFFLINE"
        ):
            call()


# --------------------------------------------------------------------------- fetch


@pytest.mark.parametrize("path", ["/img.png", "/octet", "/untyped", "/to-img"])
def test_fetch_returns_the_body(allowed: Settings, server: str, path: str) -> None:
    assert fetch(server + path, allowed, max_bytes=1000) == PNG_BYTES


def test_fetch_refuses_loopback_unless_allowlisted(tmp_path: Path, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"127.0.0.1, which is a loopback address") as info:
        fetch(f"{server}/img.png", make_settings(tmp_path), max_bytes=1000, purpose="inputImage")
    assert info.value.parameter == "inputImage"


def test_fetch_pins_the_address_but_keeps_the_host_name(tmp_path: Path, server: str) -> None:
    """Connects to the vetted IP, while the server still sees the name it was asked for."""
    settings = make_settings(tmp_path, url_allowlist=["localhost"])
    port = server.rsplit(":", 1)[1]
    url = f"http://localhost:{port}/host"
    checked = resolve_url(url, settings)
    assert checked.pinned_url(checked.addresses[0]).host in {"127.0.0.1", "::1"}
    assert fetch(url, settings, max_bytes=1000) == f"localhost:{port}".encode()


def test_html_page_refused_with_a_hint(allowed: Settings, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"'text/html' — a web page.*link to the image"):
        fetch(f"{server}/page.html", allowed, max_bytes=1000)


def test_unexpected_content_type_refused(allowed: Settings, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"'application/json'. Expected image/"):
        fetch(f"{server}/json", allowed, max_bytes=1000)
    assert fetch(f"{server}/json", allowed, max_bytes=1000, accept=("application/json",)) == b"{}"


def test_http_error_status(allowed: Settings, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"answered HTTP 404"):
        fetch(f"{server}/missing", allowed, max_bytes=1000)


def test_redirect_to_metadata_refused(allowed: Settings, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"169.254.169.254, which is a cloud metadata"):
        fetch(f"{server}/to-metadata", allowed, max_bytes=1000)


def test_redirect_to_private_host_refused(allowed: Settings, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"10.1.2.3, which is a private address"):
        fetch(f"{server}/to-private", allowed, max_bytes=1000)


def test_redirect_limit(tmp_path: Path, server: str) -> None:
    settings = make_settings(tmp_path, url_allowlist=["127.0.0.1"], fetch_max_redirects=2)
    with pytest.raises(DownloadFailed, match=r"redirected more than 2 times"):
        fetch(f"{server}/loop", settings, max_bytes=1000)
    no_redirects = make_settings(tmp_path, url_allowlist=["127.0.0.1"], fetch_max_redirects=0)
    with pytest.raises(DownloadFailed, match=r"redirected more than 0 times"):
        fetch(f"{server}/to-img", no_redirects, max_bytes=1000)


def test_redirect_without_location(allowed: Settings, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"without a Location header"):
        fetch(f"{server}/no-location", allowed, max_bytes=1000)


def test_size_cap_from_content_length(allowed: Settings, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"larger than the limit of 1,000 bytes"):
        fetch(f"{server}/big-declared", allowed, max_bytes=1000)


def test_size_cap_while_streaming(allowed: Settings, server: str) -> None:
    with pytest.raises(DownloadFailed, match=r"larger than the limit of 10,000 bytes"):
        fetch(f"{server}/endless", allowed, max_bytes=10_000)


def test_size_cap_is_inclusive(allowed: Settings, server: str) -> None:
    assert fetch(f"{server}/exactly-100", allowed, max_bytes=100) == b"y" * 100
    with pytest.raises(DownloadFailed, match=r"larger than the limit of 99 bytes"):
        fetch(f"{server}/exactly-100", allowed, max_bytes=99)


def test_timeout(tmp_path: Path, server: str) -> None:
    settings = make_settings(tmp_path, url_allowlist=["127.0.0.1"], fetch_timeout_s=0.2)
    with pytest.raises(DownloadFailed, match=r"took longer than 0.2 s.*EDGECAP_FETCH_TIMEOUT_S"):
        fetch(f"{server}/slow", settings, max_bytes=1000)


def test_connection_refused(allowed: Settings) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadFailed, match=r"Could not download.*reachable"):
        fetch(f"http://127.0.0.1:{port}/img.png", allowed, max_bytes=1000)


def test_fetch_connects_to_the_checked_address_not_a_fresh_lookup(
    tmp_path: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name is looked up once, and the connection goes to that answer."""
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            lookups.append(host)
            if len(lookups) > 1:
                raise AssertionError("rebind.test was resolved a second time")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
    settings = make_settings(tmp_path, url_allowlist=["rebind.test"])
    port = server.rsplit(":", 1)[1]
    assert fetch(f"http://rebind.test:{port}/host", settings, max_bytes=100) == (
        f"rebind.test:{port}".encode()
    )
    assert lookups == ["rebind.test"]


def test_fetch_falls_back_to_the_next_vetted_address(
    tmp_path: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like "localhost" resolving to ::1 first while the server listens on 127.0.0.1 only."""

    real_getaddrinfo = socket.getaddrinfo

    def two_addresses(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host != "dual.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),  # nobody listens
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    port = server.rsplit(":", 1)[1]
    settings = make_settings(tmp_path, url_allowlist=["127.0.0.0/8"])
    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    checked = resolve_url(f"http://dual.test:{port}/img.png", settings)
    assert [str(ip) for ip in checked.addresses] == ["127.0.0.2", "127.0.0.1"]
    assert fetch(f"http://dual.test:{port}/img.png", settings, max_bytes=1000) == PNG_BYTES
