"""``edgecap config show``: the effective configuration, and where each value came from.

Precedence: flag > ``EDGECAP_*`` environment > configuration file > default. API keys are
masked. See docs/configuration.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgecap.cli.render import to_json
from edgecap.config import config_path, explain_settings


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show the effective configuration",
        description="Show the configuration edgecap runs with (docs/configuration.md).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser(
        "show", help="every setting, its value, and where it came from (secrets masked)"
    )
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="a TOML file (default: $EDGECAP_CONFIG)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    explained = explain_settings(args.config)
    if args.json:
        rows = {e.name: {"value": _plain(e.value), "origin": e.origin} for e in explained}
        print(to_json({"config_file": _plain(config_path(args.config)), "settings": rows},
                      indent=2))  # fmt: skip
        return 0
    path = config_path(args.config)
    print(f"# configuration file: {path if path is not None else 'none'}")
    print("# precedence: flag > EDGECAP_* environment > configuration file > default")
    width = max(len(e.name) for e in explained)
    shown = [json.dumps(_plain(e.value), ensure_ascii=False) for e in explained]
    value_width = min(max(len(s) for s in shown), 48)
    for e, value in zip(explained, shown, strict=True):
        print(f"{e.name:<{width}}  {value:<{value_width}}  {e.origin}")
    return 0


def _plain(value: Any) -> Any:
    """A value as JSON shows it (paths as strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
