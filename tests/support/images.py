"""Test pictures: encoded bytes, files, data URIs, and deterministic structured photos."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

Colour = tuple[int, int, int] | str


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """``image`` encoded as ``fmt`` (any Pillow format)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bytes(width: int = 64, height: int = 48, color: Colour = (200, 30, 30)) -> bytes:
    """A flat-coloured PNG."""
    return encoded(Image.new("RGB", (width, height), color))


def jpeg_bytes(width: int, height: int) -> bytes:
    return encoded(Image.new("RGB", (width, height), (10, 120, 200)), "JPEG", quality=80)


def write_png(path: Path, size: tuple[int, int] = (56, 56), color: Colour = "red") -> Path:
    """A flat-coloured PNG file at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(*size, color))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


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


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Seeded uniform RGB noise (no structure: worst case for compression and caches)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
