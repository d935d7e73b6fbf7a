"""The small records that cross layers: a normalised image, a caption request, its result.

These are plain frozen dataclasses (picklable, so they cross the worker's process boundary).
Wire-level validation lives in ``edgecap.server.schema``; by the time a request is a
``CaptionRequest`` it is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FinishReason = Literal["stop", "length", "loop", "cancelled"]


@dataclass(frozen=True)
class LoadedImage:
    """An image decoded, EXIF-rotated, converted to RGB and resized to the budget.

    ``width`` and ``height`` are multiples of 28; ``rgb`` holds ``width * height * 3`` bytes.
    ``sha256`` identifies the source content (hex digest of the encoded bytes).
    """

    rgb: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str
    source_format: str = ""
    load_seconds: float = 0.0  # time spent fetching, decoding and resizing

    @property
    def tokens(self) -> int:
        """Image tokens the model sees: one per 28x28 cell."""
        return (self.width // 28) * (self.height // 28)


@dataclass(frozen=True)
class Sampling:
    """Sampler settings. ``temperature == 0`` means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.05
    seed: int = 0
    max_tokens: int = 256


@dataclass(frozen=True)
class CaptionRequest:
    """One image and an instruction, ready for the engine."""

    image: LoadedImage | None  # None: a text-only question
    prompt: str
    system_prompt: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    # A JSON schema to constrain the output to, or {} for "any JSON object"; None = free text.
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class TokenPiece:
    """One streamed piece of generated text."""

    text: str


@dataclass(frozen=True)
class CaptionResult:
    """What one caption produced, and what it cost."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    image_tokens: int
    generated_tokens: int
    timings: dict[str, float]  # seconds per stage: load_image, encode, prefill, generate
    model: str
    image_cache_hit: bool = False
    prefix_cache_hit: bool = False

    @property
    def compute_seconds(self) -> float:
        return sum(self.timings.values())

    def __str__(self) -> str:
        """The caption itself, so ``print(edgecap.caption(...))`` prints it (repr has it all)."""
        return self.text


@dataclass(frozen=True)
class ModelFiles:
    """A resolved model: the two GGUF files llama.cpp loads, and what they are."""

    id: str
    text: Path
    mmproj: Path
    random_weights: bool = False  # the demo model built from seeded random weights
