"""``edgecap serve``: the Runware-compatible caption API on HTTP and WebSocket."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from edgecap.cli.caption import resolve_model
from edgecap.config import default_of, load_settings
from edgecap.logs import LOG_FORMATS, LOG_LEVELS, LogSetup
from edgecap.server import serve
from edgecap.server.auth import ApiKeys, check_bind, load_key_file

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the caption API (REST and WebSocket at /v1) and the web page at /",
        description="Serve the Runware-compatible caption API: POST /v1, WebSocket /v1, "
        "POST /v1/stream, /docs, /healthz, /readyz, /metrics, and the web page at /. "
        "See docs/api.md and docs/web.md.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a TOML configuration file (default: $EDGECAP_CONFIG); flags and EDGECAP_* "
        "variables override it (docs/configuration.md)",
    )
    parser.add_argument(
        "--host", help=f"address to listen on (default {default_of('host')}, EDGECAP_HOST)"
    )
    parser.add_argument(
        "--port",
        type=port_number,
        help=f"port to listen on (default {default_of('port')}, EDGECAP_PORT)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accept this API key (repeatable; visible to other local users in the process "
        "list: prefer --api-key-file or EDGECAP_API_KEYS); without keys every request is allowed",
    )
    parser.add_argument(
        "--api-key-file", type=Path, metavar="FILE", help="accept the keys in FILE, one per line"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="refuse every outbound request (image URLs, webhooks, uploads)",
    )
    parser.add_argument("--model", help="default model: registry name, alias or path")
    parser.add_argument(
        "--kiosk",
        action="store_true",
        default=None,
        help="serve the full-screen kiosk page at / (one fixed prompt, cleared when idle)",
    )
    parser.add_argument(
        "--kiosk-prompt", type=kiosk_prompt, metavar="TEXT", help="the prompt the kiosk page uses"
    )
    parser.add_argument(
        "--kiosk-idle",
        type=idle_seconds,
        dest="kiosk_idle_s",
        metavar="SECONDS",
        help="clear the kiosk screen after this many idle seconds (default 60)",
    )
    parser.add_argument(
        "--allow-unauthenticated-public-bind",
        action="store_true",
        help="listen on a non-loopback address without an API key (dangerous)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help=f"log this much, in the server and its engine process "
        f"(default {default_of('log_level')}, EDGECAP_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help=f"log lines as text or as JSON objects (default {default_of('log_format')}, "
        "EDGECAP_LOG_FORMAT)",
    )
    parser.set_defaults(func=run)


def port_number(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def kiosk_prompt(text: str) -> str:
    """A prompt of 1 to 2000 characters."""
    if not text.strip() or len(text) > 2000:
        raise argparse.ArgumentTypeError("the kiosk prompt must be 1 to 2000 characters long")
    return text


def idle_seconds(text: str) -> float:
    """Seconds from 1 to a day."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 24 * 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 1 to 86400")
    return value


API_KEY_FLAG_WARNING = (
    "edgecap: warning: --api-key puts the key in the process list (/proc/<pid>/cmdline), "
    "readable by every local user. Prefer --api-key-file FILE or the EDGECAP_API_KEYS "
    "environment variable."
)


def run(args: argparse.Namespace) -> int:
    if args.api_keys:
        print(API_KEY_FLAG_WARNING, file=sys.stderr, flush=True)
    settings = load_settings(
        args.config,
        host=args.host,
        port=args.port,
        api_keys=args.api_keys,
        api_key_file=args.api_key_file,
        offline=args.offline,
        model=args.model,
        kiosk=args.kiosk,
        kiosk_prompt=args.kiosk_prompt,
        kiosk_idle_s=args.kiosk_idle_s,
        log_level=args.log_level or args.global_log_level,
        log_format=args.log_format,
    )
    if settings.api_key_file is not None:
        keys = [*settings.api_keys, *load_key_file(settings.api_key_file)]
        settings = settings.model_copy(update={"api_keys": keys})
    LogSetup.of(settings).apply()
    # Refuse a bad bind and a missing model before anything starts; log a warning when the
    # weights are the demo model's random ones.
    check_bind(
        settings.host,
        ApiKeys(settings.api_keys),
        allow_unauthenticated=args.allow_unauthenticated_public_bind,
    )
    resolve_model(settings, settings.model, tell=logger.warning)
    serve(settings, allow_unauthenticated_public_bind=args.allow_unauthenticated_public_bind)
    return 0
