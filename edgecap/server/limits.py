"""Bounds on what a request may make the server hold: JSON shape, strings, numbers, fields.

:func:`decode_tasks` is the strict JSON reader of every REST body and WebSocket message. Before
parsing, it counts the bytes that open objects and arrays (``{`` and ``[``, a C-speed count, an
upper bound on the containers the parse would build), so ``[{},{},…]`` cannot expand a body
24-fold in memory. It then parses the top-level array one element at a time and stops at the
first element past the task limit. Numbers must be finite (``1e999`` is refused), strings must
be valid Unicode (a lone surrogate such as ``"\\ud800"`` is refused, naming where it was).

:func:`check_bounded_json` bounds free-form fields such as ``routing`` (size and depth).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic_core import PydanticCustomError

from edgecap.errors import BadRequestBody, PayloadTooLarge

MAX_TASKS_PER_REQUEST = 64  # tasks in one REST body or WebSocket message (besides authentication)
MAX_JSON_CONTAINERS = 20_000  # objects + arrays in one body (a task needs a handful)
MAX_JSON_DEPTH = 512  # nesting of the whole body (jsonSchema has its own, tighter bound)
MAX_ROUTING_BYTES = 4096  # `routing`, as compact JSON (stored with the task, never used)
MAX_ROUTING_DEPTH = 8
MAX_URL_CHARS = 2048
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
WHITESPACE = " \t\n\r"


def decode_tasks(data: bytes | str) -> list[Any]:
    """The task array of a body (a lone task object counts as an array of one), bounded.

    Raises BadRequestBody (400) for invalid or non-finite JSON, lone surrogates, too many tasks,
    and PayloadTooLarge (413) for too many objects/arrays.
    """
    text = _text(_bounded_bytes(data))
    start = _skip(text, 0)
    if text[start : start + 1] != "[":
        value = _decode_all(text)
        tasks = [value] if isinstance(value, dict) else value
    else:
        tasks = _decode_array(text, start + 1)
    if isinstance(tasks, list):
        for index, task in enumerate(tasks):
            check_json_value(task, f"body[{index}]")
    return tasks if isinstance(tasks, list) else [tasks]


def decode_json(data: bytes | str) -> Any:
    """One JSON value (an object, say, for endpoints that take one), under the same bounds
    and strictness as :func:`decode_tasks` except the task count."""
    value = _decode_all(_text(_bounded_bytes(data)))
    check_json_value(value, "body")
    return value


def _bounded_bytes(data: bytes | str) -> bytes:
    """The body as bytes, refused (413) when it holds too many objects and arrays to parse."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        raise PayloadTooLarge(
            f"The body holds about {containers:,} JSON objects and arrays; at most "
            f"{MAX_JSON_CONTAINERS:,} are allowed. Send fewer or simpler tasks.",
            parameter="body",
            max=MAX_JSON_CONTAINERS,
        )
    return raw


def check_json_value(value: Any, where: str) -> None:
    """BadRequestBody if ``value`` nests too deeply or holds a string with a lone surrogate."""
    pending: list[tuple[Any, str, int]] = [(value, where, 1)]
    while pending:
        item, path, depth = pending.pop()
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BadRequestBody(
                    f"{path} nests objects and arrays more than {MAX_JSON_DEPTH} levels deep.",
                    parameter=path,
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, path)
                    pending.append((child, f"{path}.{key[:40]}", depth + 1))
            else:
                pending.extend((c, f"{path}[{i}]", depth + 1) for i, c in enumerate(item))


def check_bounded_json(value: Any, *, parameter: str, max_bytes: int, max_depth: int) -> None:
    """A free-form JSON field must be at most ``max_bytes`` as compact JSON and ``max_depth``
    deep; raises PayloadTooLarge (413) or InvalidParameter-like BadRequestBody naming it."""
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{parameter} is {size:,} bytes as JSON; at most {max_bytes:,} are allowed.",
            parameter=parameter,
            max=max_bytes,
        )
    if _depth(value, max_depth) > max_depth:
        raise BadRequestBody(
            f"{parameter} nests objects and arrays more than {max_depth} levels deep.",
            parameter=parameter,
            max=max_depth,
        )


def check_image_source(value: str) -> str:
    """A pydantic validator: an image given as a URL is at most MAX_URL_CHARS long."""
    if len(value) > MAX_URL_CHARS and URL_SCHEME.match(value):
        raise PydanticCustomError(
            "invalidParameter",
            "The image URL is {length} characters long; at most {limit} are allowed. Use a "
            "shorter URL, or send the image inline.",
            {"length": len(value), "limit": MAX_URL_CHARS},
        )
    return value


def check_routing(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pydantic validator: ``routing`` is small and shallow (it is stored with the task)."""
    if value is None:
        return None
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_ROUTING_BYTES or _depth(value, MAX_ROUTING_DEPTH) > MAX_ROUTING_DEPTH:
        raise PydanticCustomError(
            "invalidParameter",
            "routing is {size} bytes as JSON (at most {limit}) or nests more than {depth} "
            "levels deep; edgecap ignores routing, so send a small object or none.",
            {"size": size, "limit": MAX_ROUTING_BYTES, "depth": MAX_ROUTING_DEPTH},
        )
    return value


# Keywords whose value llama.cpp's json-schema-to-grammar unrolls into that many copies of a
# rule (``x{0,500000}`` becomes 500000 optional rules), and regex counted repetitions.
REPEAT_KEYWORDS = ("maxLength", "minLength", "maxItems", "minItems", "maxProperties")
REGEX_COUNT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
MAX_GRAMMAR_WEIGHT = 20_000  # total rule copies a schema may unroll to


def grammar_weight(schema: Any) -> int:
    """An upper estimate of the rule copies a JSON schema unrolls to in a GBNF grammar.

    Every schema node costs 1; a node's repetition bounds (and ``{n,m}`` in its ``pattern``)
    multiply the cost of what they repeat, nested repetitions multiply each other. The walk
    stops as soon as the estimate passes the limit.
    """
    total = 0
    pending: list[tuple[Any, int]] = [(schema, 1)]
    while pending and total <= MAX_GRAMMAR_WEIGHT:
        node, factor = pending.pop()
        if isinstance(node, list):
            pending.extend((item, factor) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        repeat = max([_count(node.get(k)) for k in REPEAT_KEYWORDS] + [1])
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            repeat = max([repeat] + [int(b or a) for a, b in REGEX_COUNT.findall(pattern)])
        weight = factor * max(repeat, 1)
        total += weight
        pending.extend((child, weight) for child in node.values() if isinstance(child, dict | list))
    return total


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _depth(value: Any, limit: int) -> int:
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending and deepest <= limit:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestBody(
            f"{path} holds a lone UTF-16 surrogate (such as \\ud800), which is not a "
            "character. Send valid Unicode text.",
            parameter=path,
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large (not finite)")
    return value


DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _invalid(exc: Exception) -> BadRequestBody:
    return BadRequestBody(
        f"The body is not valid JSON ({exc}). Send a UTF-8 JSON array of task objects "
        "with Content-Type: application/json.",
        parameter="body",
    )


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(exc) from None


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in WHITESPACE:
        index += 1
    return index


def _decode_all(text: str) -> Any:
    try:
        value, end = DECODER.raw_decode(text, _skip(text, 0))
    except (ValueError, RecursionError) as exc:
        raise _invalid(exc) from None
    if _skip(text, end) != len(text):
        raise _invalid(ValueError(f"extra data at character {end}"))
    if not isinstance(value, dict | list):
        raise BadRequestBody(
            f"The body must be a JSON array of task objects, not {_json_kind(value)}: "
            '[{"taskType": "caption", "taskUUID": "...", "inputs": {"image": "..."}}].',
            parameter="body",
        )
    return value


def _decode_array(text: str, index: int) -> list[Any]:
    """The elements of the array whose ``[`` ends at ``index``; stops past the task limit."""
    tasks: list[Any] = []
    index = _skip(text, index)
    if text[index : index + 1] == "]":
        return _after(text, index + 1, tasks)
    while True:
        try:
            value, index = DECODER.raw_decode(text, index)
        except (ValueError, RecursionError) as exc:
            raise _invalid(exc) from None
        tasks.append(value)
        _check_count(tasks)
        index = _skip(text, index)
        separator = text[index : index + 1]
        if separator == "]":
            return _after(text, index + 1, tasks)
        if separator != ",":
            raise _invalid(ValueError(f"expected ',' or ']' at character {index}"))
        index = _skip(text, index + 1)


def _after(text: str, index: int, tasks: list[Any]) -> list[Any]:
    if _skip(text, index) != len(text):
        raise _invalid(ValueError(f"extra data at character {index}"))
    if not tasks:
        raise BadRequestBody(
            "The body is an empty array: send at least one task object.", parameter="body"
        )
    return tasks


def _check_count(tasks: list[Any]) -> None:
    first = tasks[0]
    leading_auth = isinstance(first, dict) and first.get("taskType") == "authentication"
    if len(tasks) - leading_auth > MAX_TASKS_PER_REQUEST:
        raise BadRequestBody(
            f"The body holds more than {MAX_TASKS_PER_REQUEST} tasks; at most "
            f"{MAX_TASKS_PER_REQUEST} are allowed in one request or message. Split them over "
            "several requests.",
            parameter="body",
            max=MAX_TASKS_PER_REQUEST,
        )


def first_element(prefix: bytes) -> Any:
    """The first task of a body from its first bytes (to check an authentication task before
    reading the rest); None if the prefix does not hold a whole first element."""
    try:
        text = prefix.decode("utf-8", "ignore")
        index = _skip(text, 0)
        if text[index : index + 1] == "[":
            index = _skip(text, index + 1)
        return DECODER.raw_decode(text, index)[0]
    except (ValueError, RecursionError):
        return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else "a string"


__all__ = [
    "MAX_TASKS_PER_REQUEST",
    "check_bounded_json",
    "check_json_value",
    "decode_tasks",
    "first_element",
]
