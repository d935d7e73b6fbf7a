"""Deterministic test pictures, shared by the parity and engine tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def synthetic_photo(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic image with structure (gradients + blocks), not flat noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = ((x // 14 + y // 14) % 2 * 200).astype(np.uint8)
    pixels = np.stack([r, g, b], axis=-1)
    pixels = np.clip(pixels.astype(int) + rng.integers(-20, 20, pixels.shape), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
