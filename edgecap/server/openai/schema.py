"""The request body of ``POST /v1/chat/completions``, as pydantic models.

What OpenAI's chat completions accept, as far as a captioner can honour it: messages with text
and ``image_url`` parts, sampling options, ``stop``, ``response_format``, streaming. Parameters
that change nothing here (``user``, ``metadata``, ``store``, ...) are accepted and ignored;
parameters asking for something edgecap cannot do (``n`` > 1, tools, logprobs, audio) are
refused as ``unsupportedParameter``, and so is any parameter OpenAI does not define — as OpenAI
itself does. :func:`parse_request` turns pydantic's first complaint into an
:class:`EdgecapError` naming the parameter the way OpenAI does (``messages[0].content``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from edgecap.errors import EdgecapError, InvalidParameter, UnsupportedParameter
from edgecap.server.schema import MAX_PROMPT_CHARS, MAX_URL_CHARS, check_json_schema

MAX_MESSAGES = 64
MAX_CONVERSATION_CHARS = 100_000  # all text parts together; the context window bounds it too
MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARS = 256
MAX_IMAGE_URL_CHARS = 48 * 1024 * 1024  # a data URI; the body limit (max_body_bytes) binds first
MAX_TOKENS = 8192


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Model):
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class ImageURL(_Model):
    url: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_URL_CHARS,
        description="A data URI, an http(s) URL, or the UUID of an uploaded image",
    )
    detail: Literal["auto", "low", "high"] = "auto"

    @model_validator(mode="after")
    def _url_is_short(self) -> ImageURL:
        if self.url[:5].lower() != "data:" and len(self.url) > MAX_URL_CHARS:
            raise PydanticCustomError(
                "invalidParameter",
                "An image URL may be at most {n} characters.",
                {"n": MAX_URL_CHARS},
            )
        return self


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


def _string_or_parts(value: Any) -> Any:
    if not isinstance(value, str | list):
        raise PydanticCustomError(
            "invalidParameter",
            'content must be a string or an array of parts: {"type": "text", "text": "..."} '
            'or {"type": "image_url", "image_url": {"url": "..."}}',
        )
    return value


Content = Annotated[
    Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | list[ContentPart],
    BeforeValidator(_string_or_parts),
]


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: Content
    name: str | None = Field(None, max_length=64, description="Accepted and ignored")

    @model_validator(mode="after")
    def _images_only_from_users(self) -> Message:
        if self.role != "user" and self.images():
            raise PydanticCustomError(
                "invalidParameter", "Only user messages may carry images.", {}
            )
        return self

    def text(self) -> str:
        """The text parts, joined by newlines."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    def images(self) -> list[ImageURL]:
        if isinstance(self.content, str):
            return []
        return [p.image_url for p in self.content if isinstance(p, ImagePart)]


class JsonSchemaFormat(_Model):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _valid_schema(self) -> JsonSchemaFormat:
        if self.schema_ is not None:
            check_json_schema(self.schema_)
        return self


class TextFormat(_Model):
    type: Literal["text"]


class JsonObjectFormat(_Model):
    type: Literal["json_object"]


class JsonSchemaResponse(_Model):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaResponse, Field(discriminator="type")
]


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class StreamOptions(_Model):
    include_usage: bool = False
    include_obfuscation: bool | None = Field(None, description="Accepted and ignored")


class ChatCompletionRequest(_Model):
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # Accepted at their neutral values only (anything else is refused).
    n: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # Accepted and ignored: they change nothing here.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _a_conversation_we_can_answer(self) -> ChatCompletionRequest:
        if self.messages[-1].role != "user":
            raise PydanticCustomError(
                "invalidParameter",
                "The last message must come from the user (role 'user'): edgecap answers it.",
                {"parameter": f"messages[{len(self.messages) - 1}].role"},
            )
        images = sum(len(m.images()) for m in self.messages)
        if images > 1:
            raise PydanticCustomError(
                "unsupportedParameter",
                "The conversation holds {n} images; edgecap answers about one image per "
                "request. Ask about each image in its own request.",
                {"n": images, "parameter": "messages"},
            )
        chars = sum(len(m.text()) for m in self.messages)
        if chars > MAX_CONVERSATION_CHARS:
            raise PydanticCustomError(
                "invalidParameter",
                "The messages hold {n} characters of text; at most {limit} are allowed.",
                {"n": chars, "limit": MAX_CONVERSATION_CHARS, "parameter": "messages"},
            )
        return self

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def token_limit(self) -> int | None:
        """``max_completion_tokens``, or its older name ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


# A parameter set to something other than its neutral value: why edgecap refuses it.
NEUTRAL: dict[str, tuple[Any, str]] = {
    "n": (1, "edgecap returns one choice per request; send n=1 (or leave it out)"),
    "frequency_penalty": (0, "edgecap does not apply frequency penalties; leave it out"),
    "presence_penalty": (0, "edgecap does not apply presence penalties; leave it out"),
    "logprobs": (False, "edgecap does not return log probabilities"),
    "top_logprobs": (0, "edgecap does not return log probabilities"),
    "logit_bias": ({}, "edgecap does not apply logit biases"),
    "tools": ([], "edgecap does not call tools"),
    "tool_choice": ("none", "edgecap does not call tools"),
}


def request_schema() -> dict[str, Any]:
    """The request's JSON schema with every ``$ref`` inlined (for the OpenAPI document)."""
    schema = ChatCompletionRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return dict(inline(schema))


def parse_request(raw: Any) -> ChatCompletionRequest:
    """Validate a request body; raise the error for its first problem."""
    if not isinstance(raw, dict):
        raise InvalidParameter(
            'The body must be a JSON object: {"model": "...", "messages": [...]}.',
            parameter="body",
        )
    try:
        request = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        raise request_error(first_error(exc.errors())) from None
    for name, (neutral, why) in NEUTRAL.items():
        value = getattr(request, name)
        if value is not None and value != neutral:
            raise UnsupportedParameter(f"{name} is not supported: {why}.", parameter=name)
    text_format = request.response_format is None or request.response_format.type == "text"
    if not text_format and request.stops():
        raise UnsupportedParameter(
            "stop cannot be combined with a JSON response_format: the output would be cut "
            "before the JSON is complete.",
            parameter="stop",
        )
    return request


def request_error(error: ErrorDetails) -> EdgecapError:
    """One pydantic error as an edgecap error naming the parameter OpenAI-style."""
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    named = ctx.pop("parameter", None)
    parameter = _path(error["loc"]) if named in (None, "jsonSchema") else named
    parameter = parameter or "body"
    kind, message = error["type"], error["msg"].rstrip(".").replace("jsonSchema", "the schema")
    if kind == "extra_forbidden":
        return UnsupportedParameter(
            f"{parameter} is not a parameter edgecap understands; remove it "
            "(docs/api.md lists what the OpenAI-compatible endpoint accepts).",
            parameter=parameter,
        )
    if kind == "unsupportedParameter":
        return UnsupportedParameter(message + ".", parameter=parameter)
    if kind == "union_tag_invalid":
        return UnsupportedParameter(
            f"{parameter}: type {ctx.get('tag')!r} is not supported; use one of "
            f"{ctx.get('expected_tags')}.",
            parameter=parameter,
        )
    if kind == "missing":
        return InvalidParameter(f"{parameter} is required.", parameter=parameter)
    return InvalidParameter(f"{parameter}: {message}.", parameter=parameter)


def first_error(errors: list[ErrorDetails]) -> ErrorDetails:
    """The most specific error: the deepest one (a list's item rather than "not a string")."""
    return max(errors, key=lambda e: len(e["loc"]))


def _path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "content", "list[...]", 1, "image_url", "image_url", "url")`` ->
    ``messages[0].content[1].image_url.url``: union branch labels are dropped, and so is a
    discriminated union's tag (it repeats the field name that follows)."""
    out, previous = "", None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not ("[" in part or "-" in part or part == "str" or part == previous):
            out += f".{part}" if out else part
        previous = part
    return out
