"""The transformers reference pipeline for Qwen2.5-VL: the model, and what its processor does.

Not ``AutoProcessor``: it insists on torchvision (for video), which has no CPU wheel that imports
beside torch 2.13 here. The tokenizer plus the slow image processor is the same pipeline for one
image. Used by the parity tests and by the side-by-side benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Processor:
    """What Qwen2_5_VLProcessor does for one image: expand <|image_pad|> to the image's tokens."""

    def __init__(self, tokenizer: Any, image_processor: Any) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> str:
        """The prompt text, as the processor returns it (the tokenizer would tokenize)."""
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))

    def __call__(
        self, text: list[str], images: Any = None, return_tensors: str = "pt"
    ) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        prompt = text[0]
        if images:
            pixels = self.image_processor(images=images, return_tensors=return_tensors)
            inputs.update(pixels)
            n_tokens = int(pixels["image_grid_thw"][0].prod()) // 4
            prompt = prompt.replace("<|image_pad|>", "<|image_pad|>" * n_tokens, 1)
        inputs.update(self.tokenizer([prompt], return_tensors=return_tensors))
        return dict(inputs)


def load_reference(checkpoint: Path, dtype: Any, **image_options: Any) -> tuple[Any, Processor]:
    """The model in ``dtype`` (eval mode) and its processor; ``image_options`` go to the image
    processor (e.g. ``min_pixels``/``max_pixels``)."""
    import transformers

    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        checkpoint, torch_dtype=dtype
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    image_processor = transformers.AutoImageProcessor.from_pretrained(
        checkpoint, use_fast=False, **image_options
    )
    return model, Processor(tokenizer, image_processor)
