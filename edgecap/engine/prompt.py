"""Build the model's prompt from its own chat template (sandboxed Jinja), image marker included."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgecap.errors import ModelError

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

    def render(self, prompt: str, *, system_prompt: str | None, with_image: bool) -> str:
        content: list[dict[str, Any]] = []
        if with_image:
            content.append({"type": "image"})
        content.append({"type": "text", "text": prompt})
        messages: list[dict[str, Any]] = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": content})
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
