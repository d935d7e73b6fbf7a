"""The configuration file (TOML): reading it, refusing unknown keys, and finding a key's line.

pydantic-settings' ``TomlConfigSettingsSource`` supplies the values (edgecap.config); this
module only checks the file first, so that a typo is refused with the key's name and its line
rather than silently ignored or reported without a place. ``tomllib`` keeps no positions, so
:func:`key_line` looks the key up in the text: enough for the flat ``key = value`` files
edgecap reads (docs/configuration.md).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgecap.errors import InvalidParameter

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


def read_config(path: Path, known: Iterable[str]) -> dict[str, Any]:
    """The file's keys and values; InvalidParameter for an unreadable file, bad TOML, or a key
    that is not a setting (naming the key, its line, and the closest setting)."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise InvalidParameter(
            f"Cannot read the configuration file {path}: {reason}.", parameter="config"
        ) from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameter(f"{path} is not valid TOML: {exc}.", parameter="config") from None
    names = sorted(known)
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InvalidParameter(
                f"{path} line {key_line(text, key)}: unknown setting {key!r}; {hint}"
                "docs/configuration.md lists every setting.",
                parameter=key,
            )
    return values


def key_line(text: str, key: str) -> int | None:
    """The line (1-based) where the top-level ``key`` is set, or its ``[key]`` table opens."""
    name = rf"(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')"
    pattern = re.compile(rf"^\s*(?:{name}\s*[=.]|\[\[?\s*{name}\s*[\].])")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def describe_line(path: Path, key: str) -> str:
    """``edgecap.toml line 4`` (or just the path when the key cannot be found)."""
    try:
        line = key_line(path.read_text("utf-8"), key)
    except (OSError, UnicodeDecodeError):
        line = None
    return f"{path} line {line}" if line is not None else str(path)
