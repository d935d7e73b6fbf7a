"""What the OpenAI-compatible endpoint answers: completions, stream chunks, models, errors.

Shapes follow OpenAI's chat completions API: ``chat.completion`` objects, server-sent events
of ``chat.completion.chunk`` objects ending with ``data: [DONE]``, and errors as
``{"error": {"message", "type", "param", "code"}}`` with the error's HTTP status.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from edgecap.errors import EdgecapError
from edgecap.protocol import WIRE_NAMES
from edgecap.records import CaptionResult, TokenPiece

# finish_reason by the engine's finish reason: a cut repetition loop ends like a stop.
FINISH_REASONS = {"stop": "stop", "length": "length", "loop": "stop", "cancelled": "stop"}
# OpenAI's error type by HTTP status (anything else >= 500 is a server_error).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
# edgecap codes that OpenAI clients know under another name, and another status.
OPENAI_CODES = {"invalidApiKey": "invalid_api_key", "unknownModel": "model_not_found"}
OPENAI_STATUS = {"unknownModel": 404}


@dataclass(frozen=True)
class Completion:
    """Identity of one answer, shared by its chunks."""

    id: str
    model: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, result: CaptionResult) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": FINISH_REASONS[result.finish_reason],
                }
            ],
            "usage": usage(result),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        """One server-sent event carrying a ``chat.completion.chunk``."""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._event({"choices": [choice]})

    def usage_chunk(self, result: CaptionResult) -> str:
        return self._event({"choices": [], "usage": usage(result)})

    def _event(self, fields: dict[str, Any]) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            **fields,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def usage(result: CaptionResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.generated_tokens,
        "total_tokens": result.prompt_tokens + result.generated_tokens,
    }


class Trim:
    """Streamed pieces trimmed as the final text is (``str.strip``): leading whitespace is
    dropped, trailing whitespace held until more text follows it."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def feed(self, piece: str) -> str:
        if not self._started:
            piece = piece.lstrip()
            self._started = bool(piece)
        text = self._held + piece
        kept = text.rstrip()
        self._held = text[len(kept) :]
        return kept


async def sse_events(
    completion: Completion,
    first: TokenPiece | CaptionResult,
    rest: AsyncGenerator[TokenPiece | CaptionResult, None],
) -> AsyncIterator[str]:
    """The stream: a role chunk, content chunks, the finish chunk, usage if asked, [DONE].

    The content chunks join up to the non-streamed text. An error after the stream began is
    sent as an ``error`` event before ``[DONE]``.
    """
    yield completion.chunk({"role": "assistant", "content": ""})
    trim, sent = Trim(), ""
    event: TokenPiece | CaptionResult | None = first
    try:
        while event is not None:
            if isinstance(event, TokenPiece):
                if text := trim.feed(event.text):
                    sent += text
                    yield completion.chunk({"content": text})
                event = await anext(rest, None)
                continue
            if event.text.startswith(sent) and len(event.text) > len(sent):
                yield completion.chunk({"content": event.text[len(sent) :]})
            yield completion.chunk({}, FINISH_REASONS[event.finish_reason])
            if completion.include_usage:
                yield completion.usage_chunk(event)
            break
    except EdgecapError as exc:
        yield f"data: {json.dumps(error_body(exc), ensure_ascii=False)}\n\n"
    finally:
        await rest.aclose()
    yield "data: [DONE]\n\n"


def error_body(exc: EdgecapError) -> dict[str, Any]:
    """OpenAI's error object; edgecap's extra fields (e.g. retryAfter) ride along."""
    status = error_status(exc)
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    extra = {WIRE_NAMES.get(k, k): v for k, v in exc.extra.items()}
    return {
        "error": {
            "message": exc.message,
            "type": kind,
            "param": exc.parameter,
            "code": OPENAI_CODES.get(exc.code, exc.code),
            **extra,
        }
    }


def error_status(exc: EdgecapError) -> int:
    return OPENAI_STATUS.get(exc.code, exc.status)


def error_response(exc: EdgecapError) -> JSONResponse:
    headers = {}
    retry_after = exc.extra.get("retry_after")
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(error_body(exc), status_code=error_status(exc), headers=headers)
