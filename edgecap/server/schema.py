"""The task objects of the caption API (caption-api.md) as strict pydantic models.

Every field a Runware client is known to send is declared; anything else is refused as
``unsupportedParameter``. :func:`parse_task` turns pydantic's first complaint into the
contract's error (:mod:`edgecap.server.contract_errors`): ``invalidTaskUUID``,
``invalidPrompt``, ``missingInputImage``, ``invalidParameter`` with
``min``/``max``/``allowedValues``, and so on, with a message that says how to fix the request.

What the official clients send (read in their source):

- ``runware`` 0.5.24 (WebSocket): ``authentication`` {apiKey, connectionSessionUUID?},
  ``ping`` {ping}, ``imageUpload`` {taskUUID, image}, ``imageCaption`` {taskUUID, inputImage or
  inputImages, model?, template or prompt (an array of strings), includeCost?, webhookURL?},
  ``getResponse`` / ``getTaskDetails`` {taskUUID}.
- ``runware-sdk`` 1.8.0 (REST or WebSocket): ``caption`` {taskType, taskUUID, deliveryMethod
  (``async`` by default), model, inputs, includeCost?, webhookURL?, routing?}, then
  ``getResponse`` {taskUUID}; the same ``authentication`` and ``ping``; ``imageUpload``
  {taskUUID, image}.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from edgecap.config import MAX_SEED, MAX_TEMPERATURE, MAX_TOKENS_LIMIT, MAX_TTL_S
from edgecap.server.contract_errors import contract_error
from edgecap.server.limits import (
    MAX_GRAMMAR_WEIGHT,
    MAX_ROUTING_BYTES,
    check_image_source,
    check_routing,
    grammar_weight,
)

MAX_PROMPT_CHARS = 20_000
MAX_INPUT_IMAGES = 8
MAX_URL_CHARS = 2048
MAX_JSON_SCHEMA_DEPTH = 32  # nesting of objects and arrays in jsonSchema
MAX_JSON_SCHEMA_BYTES = 64 * 1024  # jsonSchema serialized as JSON
UUID_V4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.I)
CAPTION_TASK_TYPES = ("caption", "imageCaption")


def _check_uuid_v4(value: str) -> str:
    if not UUID_V4.fullmatch(value):
        raise PydanticCustomError(
            "invalidTaskUUID",
            "taskUUID must be a UUID v4 such as 3f2b6c1e-8d4a-4c5e-9f7a-1b2c3d4e5f60, "
            "not '{value}'. Generate a new one for every task (uuid.uuid4()).",
            {"value": value[:80]},
        )
    return value


def _join_prompt(value: Any) -> Any:
    """A prompt is a string or an array of strings (joined with newlines)."""
    if isinstance(value, list):
        if not value or not all(isinstance(part, str) for part in value):
            raise PydanticCustomError(
                "invalidPrompt",
                "An array prompt must hold one or more strings, e.g. "
                '["Describe the image.", "Mention any text."].',
            )
        return "\n".join(value)
    return value


TaskUUID = Annotated[str, AfterValidator(_check_uuid_v4)]
Prompt = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS),
    BeforeValidator(_join_prompt),
]


ImageSource = Annotated[str, Field(min_length=1), AfterValidator(check_image_source)]
WebURL = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]


class _Task(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False
    )


class CaptionInputs(_Task):
    image: ImageSource = Field(
        description="An uploaded image's UUID, an http(s) URL, a data URI or plain base64"
    )


class CaptionTask(_Task):
    """``caption`` (or the legacy ``imageCaption``): describe an image, or answer about it."""

    task_type: Literal["caption", "imageCaption"] = Field(alias="taskType")
    task_uuid: TaskUUID = Field(alias="taskUUID")
    model: str | None = Field(
        None, min_length=1, max_length=256, description="AIR id, alias or local model name"
    )
    inputs: CaptionInputs | None = None
    input_image: ImageSource | None = Field(None, description="Legacy form of inputs.image")
    input_images: list[ImageSource] | None = Field(
        None, min_length=1, max_length=MAX_INPUT_IMAGES, description="One result per image"
    )
    prompt: Prompt | None = Field(None, description="A string, or strings joined by newlines")
    template: Prompt | None = Field(None, description="Legacy name of prompt")
    include_cost: bool = False
    delivery_method: Literal["sync", "async"] = "sync"
    webhook_url: WebURL | None = Field(None, alias="webhookURL")
    upload_endpoint: WebURL | None = None
    ttl: int | None = Field(
        None, ge=60, le=MAX_TTL_S, description="Seconds the result stays retrievable"
    )
    output_type: Literal["URL", "base64Data", "dataURI"] | None = None
    output_format: Literal["JPG", "PNG", "WEBP"] | None = None
    output_quality: int = Field(95, ge=20, le=99)
    routing: Annotated[dict[str, Any] | None, AfterValidator(check_routing)] = Field(
        None, description=f"Accepted and ignored; at most {MAX_ROUTING_BYTES} bytes as JSON"
    )
    # edgecap extensions
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    max_pixels: int | None = Field(None, gt=0, description="Image budget, clamped to the ceiling")
    min_pixels: int | None = Field(None, gt=0)
    response_format: Literal["text", "json"] | None = None
    json_schema: dict[str, Any] | None = Field(None, description="Constrain the output to it")

    @model_validator(mode="after")
    def _one_image_source(self) -> CaptionTask:
        given = [
            name
            for name, value in (
                ("inputs.image", self.inputs),
                ("inputImage", self.input_image),
                ("inputImages", self.input_images),
            )
            if value is not None
        ]
        if len(given) != 1:
            problem = "No image was given" if not given else f"Both {' and '.join(given)} given"
            raise PydanticCustomError(
                "missingInputImage",
                "{problem}: send exactly one of inputs.image, inputImage or inputImages "
                "(an uploaded image's UUID, an http(s) URL, a data URI or base64).",
                {"problem": problem, "parameter": "inputs.image"},
            )
        return self

    @model_validator(mode="after")
    def _consistent_text_options(self) -> CaptionTask:
        if self.prompt is not None and self.template is not None:
            raise PydanticCustomError(
                "invalidPrompt",
                "Send the instruction as prompt or as template (its legacy name), not both.",
                {"parameter": "template"},
            )
        if self.json_schema is not None and self.response_format == "text":
            raise PydanticCustomError(
                "invalidParameter",
                'jsonSchema asks for JSON output but responseFormat is "text"; drop one.',
                {"parameter": "responseFormat"},
            )
        if self.json_schema is not None:
            check_json_schema(self.json_schema)
        return self

    def image_sources(self) -> list[str]:
        """The images to caption, in order (exactly one source form was given)."""
        if self.inputs is not None:
            return [self.inputs.image]
        if self.input_image is not None:
            return [self.input_image]
        return list(self.input_images or [])

    def instruction(self) -> str | None:
        return self.prompt if self.prompt is not None else self.template


def _nesting_depth(value: Any, limit: int) -> int:
    """How deeply objects and arrays nest in ``value`` (iterative; stops past ``limit``)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


def check_json_schema(schema: dict[str, Any]) -> None:
    """A bounded, valid JSON schema, or invalidParameter naming jsonSchema."""
    if _nesting_depth(schema, MAX_JSON_SCHEMA_DEPTH) > MAX_JSON_SCHEMA_DEPTH:
        raise PydanticCustomError(
            "invalidParameter",
            "jsonSchema nests objects and arrays more than {limit} levels deep; "
            "flatten it or use $defs and $ref.",
            {"limit": MAX_JSON_SCHEMA_DEPTH, "parameter": "jsonSchema"},
        )
    size = len(json.dumps(schema, ensure_ascii=False, default=str).encode())
    if size > MAX_JSON_SCHEMA_BYTES:
        raise PydanticCustomError(
            "invalidParameter",
            "jsonSchema is {size} bytes as JSON, more than the {limit} allowed; "
            "send a smaller schema.",
            {"size": size, "limit": MAX_JSON_SCHEMA_BYTES, "parameter": "jsonSchema"},
        )
    unrolled = grammar_weight(schema)
    if unrolled > MAX_GRAMMAR_WEIGHT:
        raise PydanticCustomError(
            "invalidParameter",
            "jsonSchema would unroll into a grammar of about {weight} repetitions (more than "
            "{limit}): lower maxLength, maxItems, minItems, minLength or the {{n,m}} counts "
            "in pattern.",
            {"weight": unrolled, "limit": MAX_GRAMMAR_WEIGHT, "parameter": "jsonSchema"},
        )
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise PydanticCustomError(
            "invalidParameter",
            "jsonSchema is not a valid JSON schema: {problem}.",
            {"problem": exc.message, "parameter": "jsonSchema"},
        ) from None
    except RecursionError:  # $ref cycles and the like: refuse, do not crash
        raise PydanticCustomError(
            "invalidParameter",
            "jsonSchema is too complex to check (it recurses too deeply); simplify it.",
            {"parameter": "jsonSchema"},
        ) from None


class ImageUploadTask(_Task):
    """``imageUpload``: store an image, get a UUID to caption it by."""

    task_type: Literal["imageUpload"] = Field(alias="taskType")
    task_uuid: TaskUUID = Field(alias="taskUUID")
    image: ImageSource = Field(description="A data URI, plain base64, or an http(s) URL")


class GetResponseTask(_Task):
    """``getResponse``: the status or result of an earlier task."""

    task_type: Literal["getResponse"] = Field(alias="taskType")
    task_uuid: TaskUUID = Field(alias="taskUUID", description="The earlier task's UUID")


class GetTaskDetailsTask(_Task):
    """``getTaskDetails``: an earlier task as it was sent, and the reply it got."""

    task_type: Literal["getTaskDetails"] = Field(alias="taskType")
    task_uuid: TaskUUID = Field(alias="taskUUID", description="The earlier task's UUID")


class PingTask(_Task):
    task_type: Literal["ping"] = Field(alias="taskType")
    ping: bool | None = None
    task_uuid: TaskUUID | None = Field(None, alias="taskUUID")


class AuthenticationTask(_Task):
    """The first element (REST) or first message (WebSocket) when API keys are required."""

    task_type: Literal["authentication"] = Field(alias="taskType")
    api_key: str = Field(max_length=512)
    connection_session_uuid: TaskUUID | None = Field(
        None, alias="connectionSessionUUID", description="Resume this WebSocket session"
    )
    task_uuid: TaskUUID | None = Field(None, alias="taskUUID")


TASK_MODELS: tuple[type[_Task], ...] = (
    CaptionTask,
    ImageUploadTask,
    GetResponseTask,
    GetTaskDetailsTask,
    PingTask,
    AuthenticationTask,
)


def parse_task(model: type[_Task], raw: dict[str, Any]) -> Any:
    """Validate ``raw`` as ``model``; raise the contract's error for the first problem."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise contract_error(model, raw, exc.errors()[0]) from None
