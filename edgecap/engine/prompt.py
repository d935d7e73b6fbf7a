"""Build the model's prompt from its own chat template (sandboxed Jinja), image marker included."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgecap.errors import ModelError
from edgecap.records import ChatTurn

# What the Qwen2.5-VL template emits for an image; mtmd wants its own marker there and adds
# <|vision_start|>/<|vision_end|> around the image chunk itself.
TEMPLATE_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """A compiled chat template; ``render`` gives the prompt with ``marker`` for the image."""

    def __init__(self, source: str, marker: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ModelError(f"The model's chat template does not compile: {exc}") from exc
        self.marker = marker

    def render(
        self,
        prompt: str,
        *,
        system_prompt: str | None,
        with_image: bool,
        history: Sequence[ChatTurn] = (),
    ) -> str:
        """The prompt for ``history`` then the user message ``prompt``, ready for generation.

        With ``with_image``, the image goes with the history turn marked ``image``, else with
        ``prompt``. A ``system_prompt`` is added only when the history starts without one.
        """
        image_in_history = with_image and any(turn.image for turn in history)
        messages: list[dict[str, Any]] = []
        if system_prompt is not None and not (history and history[0].role == "system"):
            messages.append({"role": "system", "content": system_prompt})
        messages += [_message(turn.role, turn.text, turn.image and with_image) for turn in history]
        messages.append(_message("user", prompt, with_image and not image_in_history))
        try:
            text = self._template.render(messages=messages, add_generation_prompt=True)
        except TemplateError as exc:
            raise ModelError(f"The model's chat template failed to render: {exc}") from exc
        if with_image:
            if TEMPLATE_IMAGE not in text:
                raise ModelError(
                    "The model's chat template has no Qwen2.5-VL image placeholder; "
                    "re-convert the model with tools/convert.py."
                )
            text = text.replace(TEMPLATE_IMAGE, self.marker, 1)
        return text


def _message(role: str, text: str, with_image: bool) -> dict[str, Any]:
    """A chat message; user messages carry content parts (the image first), as Qwen's do."""
    if role != "user":
        return {"role": role, "content": text}
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": text})
    return {"role": role, "content": content}
