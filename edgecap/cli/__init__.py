"""The ``edgecap`` command: a thin shell that parses, calls one library function, and renders.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the parser it adds
sets ``func`` (taking the parsed namespace, returning an exit code). Library errors are
translated here, once: a message on stderr and exit code 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgecap import __version__
from edgecap.errors import EdgecapError
from edgecap.logs import LOG_LEVELS, configure_logging

# Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ("caption", "serve", "models", "doctor", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecap", description="Offline image captioning with Qwen2.5-VL on llama.cpp."
    )
    parser.add_argument("--version", action="version", version=f"edgecap {__version__}")
    parser.add_argument(
        "--log-level",
        dest="global_log_level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log edgecap's own messages to stderr at this level (serve: see its --log-level)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"edgecap.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.global_log_level is not None:
        configure_logging(args.global_log_level)
    try:
        return int(args.func(args) or 0)
    except EdgecapError as exc:
        print(f"edgecap: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgecap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
