"""From a validated chat completion request to the :class:`CaptionJob` the task service runs.

The conversation becomes the request's history (every message but the last) and its prompt
(the last, a user message). Leading system (or developer) messages become the system prompt;
without one, the server's ``system_prompt`` setting applies. The one image, wherever it is in
the conversation, is fetched (URL policy of :mod:`edgecap.inputs.netguard`), decoded and
budgeted like a caption task's. Blocking: call from a worker thread.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from edgecap.config import PIXELS_PER_TOKEN
from edgecap.errors import EdgecapError
from edgecap.inputs import images
from edgecap.records import CaptionRequest, ChatTurn, LoadedImage, Sampling
from edgecap.runtime.service import CaptionJob
from edgecap.server.jobs import JobInputs, fingerprint, inline_placeholder, resolve_model
from edgecap.server.openai.schema import ChatCompletionRequest, ImageURL, Message
from edgecap.server.uploads import is_media_uuid, wire_image

TASK_TYPE = "chatCompletion"  # how these tasks are stored (getTaskDetails shows it)
RESULT_TTL_S = 300  # nobody polls for a chat answer: keep it only briefly
LOW_DETAIL_PIXELS = 256 * PIXELS_PER_TOKEN  # "detail": "low" - about 0.2 megapixels
ROLES: dict[str, Literal["system", "user", "assistant"]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


def make_job(
    request: ChatCompletionRequest, inputs: JobInputs, owner: str | None = None
) -> CaptionJob:
    """Check the model, load the image, and build the job (under a new task UUID) for the
    key whose hash is ``owner`` (None without keys)."""
    settings = inputs.settings
    model = resolve_model(inputs.registry, request.model)
    messages = list(request.messages)
    system: list[str] = []
    while messages and ROLES[messages[0].role] == "system" and len(messages) > 1:
        system.append(messages.pop(0).text())
    *earlier, last = messages
    image = _load_image(request, inputs, owner)
    json_schema: dict[str, Any] | None = None
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        json_schema = {}
    elif fmt is not None and fmt.type == "json_schema":
        json_schema = fmt.json_schema.schema_ or {}
    sampling = Sampling(
        temperature=request.temperature if request.temperature is not None else 0.0,
        top_p=request.top_p if request.top_p is not None else 1.0,
        seed=request.seed & 0xFFFFFFFF if request.seed is not None else 0,
        max_tokens=request.token_limit() or settings.max_tokens,
        stop=request.stops(),
    )
    caption_request = CaptionRequest(
        image=image,
        prompt=last.text() or settings.default_prompt,
        system_prompt="\n\n".join(system) if system else settings.system_prompt,
        sampling=sampling,
        json_schema=json_schema,
        history=tuple(_turn(message) for message in earlier),
    )
    stored = storable(request)
    return CaptionJob(
        task_uuid=str(uuid.uuid4()),
        request=caption_request,
        model=model,
        include_cost=False,
        webhook_url=None,
        upload_endpoint=None,
        ttl_s=RESULT_TTL_S,
        fingerprint=fingerprint(stored),
        original_task=stored,
        owner=owner,
    )


def _turn(message: Message) -> ChatTurn:
    return ChatTurn(ROLES[message.role], message.text(), image=bool(message.images()))


def _load_image(
    request: ChatCompletionRequest, inputs: JobInputs, owner: str | None
) -> LoadedImage | None:
    """The conversation's image (there is at most one), decoded and budget-resized."""
    for i, message in enumerate(request.messages):
        for part in message.images():
            return load_image_url(part, f"messages[{i}].content", inputs, owner)
    return None


def load_image_url(
    part: ImageURL, parameter: str, inputs: JobInputs, owner: str | None = None
) -> LoadedImage:
    """An ``image_url``: an uploaded image's UUID (``owner``'s), a data URI or an http(s)
    URL."""
    try:
        readable: str | bytes = (
            inputs.uploads.read(part.url, parameter=parameter, owner=owner)
            if is_media_uuid(part.url)
            else wire_image(part.url, inputs.settings)
        )
        low = LOW_DETAIL_PIXELS if part.detail == "low" else None
        return images.load_image(readable, inputs.settings, max_pixels=low)
    except EdgecapError as exc:
        exc.parameter = exc.parameter or parameter
        raise


def storable(request: ChatCompletionRequest) -> dict[str, Any]:
    """The request as the task store keeps it: long data URIs become a placeholder."""
    out = request.model_dump(mode="json", exclude_none=True, by_alias=True)
    for message in out["messages"]:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part["type"] == "image_url":
                    part["image_url"]["url"] = inline_placeholder(part["image_url"]["url"])
    return {"taskType": TASK_TYPE, **out}
