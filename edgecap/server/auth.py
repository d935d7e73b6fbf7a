"""API keys: who may use the server, and when it may listen beyond this machine.

Keys come from ``settings.api_keys`` (``--api-key``, ``--api-key-file``, ``EDGECAP_API_KEYS``).
A client presents one as ``Authorization: Bearer <key>`` (REST) or in an ``authentication`` task
(first element of a REST body, first WebSocket message). Keys are compared in constant time and
never logged; with no keys configured every request is allowed, which is why
:func:`check_bind` refuses to listen on a public address without keys.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from edgecap.errors import AuthError, InvalidParameter, MissingApiKey

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class ApiKeys:
    """The accepted keys, held only as sha256 digests."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [_digest(key) for key in keys if key]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def check(self, key: str | None) -> None:
        """Raise MissingApiKey or AuthError (invalidApiKey) unless ``key`` is accepted."""
        if not self.required:
            return
        if not key:
            raise MissingApiKey(
                "This server requires an API key: send the header "
                "'Authorization: Bearer <key>' or an authentication task "
                '{"taskType": "authentication", "apiKey": "<key>"} first.',
                parameter="apiKey",
            )
        candidate = _digest(key)
        # compare_digest against every key, without stopping early: the time taken does not
        # reveal which key, or how much of one, matched.
        matches = [hmac.compare_digest(candidate, digest) for digest in self._digests]
        if not any(matches):
            raise AuthError(
                "The API key is not valid for this server. Check the key, or ask the operator "
                "for one (edgecap serve --api-key / --api-key-file).",
                parameter="apiKey",
            )

    def identity(self, key: str | None) -> str:
        """A stable, non-secret name for the key a client used (to bind sessions to it)."""
        return _digest(key or "").hex()[:16]


def bearer_key(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header, if there is one."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def load_key_file(path: Path) -> list[str]:
    """API keys from a file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise InvalidParameter(
            f"Cannot read the API key file {path}: {exc.strerror or exc}.",
            parameter="api-key-file",
        ) from exc
    keys = [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        raise InvalidParameter(
            f"The API key file {path} holds no key (one key per line).",
            parameter="api-key-file",
        )
    return keys


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, keys: ApiKeys, *, allow_unauthenticated: bool) -> str | None:
    """Refuse to listen on a non-loopback address without API keys; return a warning if allowed.

    Raises InvalidParameter unless ``allow_unauthenticated`` is set.
    """
    if keys.required or is_loopback(host):
        return None
    if not allow_unauthenticated:
        raise InvalidParameter(
            f"Refusing to listen on {host} without an API key: anyone who can reach this "
            "machine could use it. Pass --api-key KEY (or --api-key-file FILE), bind "
            "--host 127.0.0.1, or accept the risk with --allow-unauthenticated-public-bind.",
            parameter="host",
        )
    return (
        f"WARNING: edgecap is listening on {host} WITHOUT an API key. Anyone who can reach "
        "this address can caption images, fill the queue and read task results."
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
