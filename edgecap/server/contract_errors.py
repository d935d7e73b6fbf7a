"""One pydantic validation error as the caption API's error object (docs/api.md, "Errors").

The validators of :mod:`edgecap.server.schema` raise custom error types named after the
contract's codes; everything else pydantic reports (a wrong type, a bound, a missing field, an
unknown field) is described here, with ``min``/``max``/``allowedValues`` read from the field's
declaration and a message that says how to fix the request.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from edgecap.errors import EdgecapError, UnsupportedParameter

# Error types our validators raise: each is the contract's error code.
CUSTOM_CODES = frozenset(
    {"invalidTaskUUID", "invalidPrompt", "missingInputImage", "invalidParameter"}
)
IMAGE_FIELDS = frozenset({"inputs.image", "image"})
# The error code for a malformed field, when it is not invalidParameter.
FIELD_CODES = {
    "taskUUID": "invalidTaskUUID",
    "prompt": "invalidPrompt",
    "template": "invalidPrompt",
    "model": "invalidModel",
    "inputs": "invalidInputImage",
    "inputs.image": "invalidInputImage",
    "inputImage": "invalidInputImage",
    "inputImages": "invalidInputImage",
    "image": "invalidInputImage",
    "apiKey": "invalidApiKey",
}
TYPE_PHRASES = {
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}
BOUND_PHRASES = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "greater than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}
LENGTH_PHRASES = {
    "string_too_short": ("min_length", "at least {} characters long"),
    "string_too_long": ("max_length", "at most {} characters long"),
    "too_short": ("min_length", "an array of at least {} items"),
    "too_long": ("max_length", "an array of at most {} items"),
}  # too_short/too_long: lists (strings get the string_ kinds)


def contract_error(
    model: type[BaseModel], raw: dict[str, Any], error: ErrorDetails
) -> EdgecapError:
    """One pydantic error as the caption API's error."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    parameter = ctx.pop("parameter", None) or ".".join(str(p) for p in error["loc"]) or None
    task_type = str(raw.get("taskType"))
    if kind == "extra_forbidden":
        owner = _model_at(model, error["loc"][:-1])
        known = ", ".join(f.alias or name for name, f in owner.model_fields.items())
        where = "" if owner is model else " of " + ".".join(map(str, error["loc"][:-1]))
        return UnsupportedParameter(
            f"{parameter} is not a parameter of the {task_type} task; remove it. "
            f"Parameters{where}: {known}.",
            parameter=parameter,
        )
    if kind in CUSTOM_CODES:
        return EdgecapError(error["msg"], code=kind, parameter=parameter)
    if kind == "missing" and parameter in IMAGE_FIELDS:
        code = "missingInputImage"
    else:
        code = FIELD_CODES.get(parameter or "", "invalidParameter")
    message, extra = _describe(model, parameter or "the task", error)
    return EdgecapError(message, code=code, parameter=parameter, **extra)


def _describe(
    model: type[BaseModel], parameter: str, error: ErrorDetails
) -> tuple[str, dict[str, Any]]:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = f"not {_json_kind(value)}" if kind in TYPE_PHRASES else f"got {_shown(value)}"
    if kind == "missing":
        hint = " Send a new UUID v4 for every task." if parameter == "taskUUID" else ""
        return f"{parameter} is required.{hint}", {}
    if kind in TYPE_PHRASES:
        return f"{parameter} must be {TYPE_PHRASES[kind]}, {got}.", {"type": _type_name(kind)}
    if kind == "literal_error":
        allowed = _allowed_values(model, parameter)
        shown = ", ".join(repr(v) for v in allowed)
        return f"{parameter} must be one of {shown}; {got}.", {"allowedValues": allowed}
    if kind in BOUND_PHRASES:
        key, phrase = BOUND_PHRASES[kind]
        return f"{parameter} must be {phrase} {ctx[key]}; {got}.", _bounds(model, parameter)
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return f"{parameter} must not be empty.", _bounds(model, parameter)
    if kind in LENGTH_PHRASES:
        key, phrase = LENGTH_PHRASES[kind]
        return f"{parameter} must be {phrase.format(ctx[key])}.", _bounds(model, parameter)
    return f"{parameter} is invalid: {error['msg']}.", {}


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The nested model that the path ``loc`` leads to (``("inputs",)`` -> CaptionInputs)."""
    for part in loc:
        info = _field(model, str(part))
        nested = _non_null(info.annotation) if info is not None else None
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            return model
        model = nested
    return model


def _non_null(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _field(model: type[BaseModel], parameter: str) -> Any:
    for name, info in model.model_fields.items():
        if (info.alias or name) == parameter:
            return info
    return None


def _allowed_values(model: type[BaseModel], parameter: str) -> list[Any]:
    info = _field(model, parameter)
    if info is None:
        return []
    return list(typing.get_args(_non_null(info.annotation)))


def _bounds(model: type[BaseModel], parameter: str) -> dict[str, Any]:
    """``min``/``max`` of a numeric field, or of a length, as declared."""
    info = _field(model, parameter)
    if info is None:
        return {}
    inner = _non_null(info.annotation)  # an Optional[Annotated[...]] keeps its bounds inside
    out: dict[str, Any] = {}
    for meta in [*info.metadata, *getattr(inner, "__metadata__", ())]:
        for attr, key in (("ge", "min"), ("gt", "min"), ("min_length", "min")):
            if getattr(meta, attr, None) is not None:
                out[key] = getattr(meta, attr)
        for attr, key in (("le", "max"), ("lt", "max"), ("max_length", "max")):
            if getattr(meta, attr, None) is not None:
                out[key] = getattr(meta, attr)
    return out


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int | float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return f"{name} ({_shown(value)})"
    return "an array" if isinstance(value, list) else "an object"


def _type_name(kind: str) -> str:
    return TYPE_PHRASES[kind].split(" ")[1]


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
