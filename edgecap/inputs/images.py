"""Turn any image source into a :class:`LoadedImage`: read, guard, decode, rotate, RGB, budget.

Every image takes the same path, whoever sends it (CLI, server, batch):

1. **read** the encoded bytes — a file path, raw bytes, an http(s) URL (through
   :mod:`edgecap.inputs.netguard`), a data URI, plain base64, or ``"-"`` for stdin — capped at
   ``settings.max_image_bytes``;
2. **guard**: the dimensions are read from the header (``Image.open`` is lazy) and checked
   against ``settings.max_image_megapixels`` before any pixel is decoded;
3. **decode** the first frame, apply the EXIF orientation, convert to RGB (alpha on white);
4. **budget**: resize with bicubic to the size the reference processor would pick
   (:func:`smart_resize`), so llama.cpp receives exact multiples of 28 and never resizes again.

The image is identified by the sha256 of its encoded bytes, never by its path or URL.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import time
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from edgecap.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, PIXELS_PER_TOKEN, Settings
from edgecap.errors import InvalidInputImage
from edgecap.inputs import fetching
from edgecap.inputs.base64text import decode_base64, too_many_bytes
from edgecap.inputs.decoding import (
    BUILTIN_FORMATS,
    EncodedImage,
    decode_slot,
    decoded,
    header_pixels,
    supported_formats,
    to_rgb,
)
from edgecap.records import LoadedImage

FACTOR = 28  # patch size 14 x spatial merge 2: the side of one image token
MAX_ASPECT_RATIO = 200  # the reference processor refuses anything longer and thinner

ImageSource = str | bytes | Path
BASE64_TEXT = "the base64 text (no file of that name exists)"


def load_image(
    source: ImageSource,
    settings: Settings,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    stdin: BinaryIO | None = None,
) -> LoadedImage:
    """Read, check, decode and budget-resize an image from any supported source.

    ``min_pixels``/``max_pixels`` override the settings' budget for this image (clamped by
    :func:`pixel_budget`). ``stdin`` is read for the source ``"-"`` (default: the process's
    stdin). Raises :class:`InvalidInputImage`, or :class:`DownloadFailed` for URLs.
    """
    started = time.perf_counter()
    low, high = pixel_budget(settings, min_pixels=min_pixels, max_pixels=max_pixels)
    encoded = read_source(source, settings, stdin=stdin)
    with decoded(encoded, settings, target_pixels=high) as picture:
        original_width, original_height = picture.original_size
        height, width = smart_resize(
            original_height, original_width, min_pixels=low, max_pixels=high
        )
        resized = picture.image.resize((width, height), Image.Resampling.BICUBIC)
    return LoadedImage(
        rgb=resized.tobytes(),
        width=width,
        height=height,
        original_width=original_width,
        original_height=original_height,
        sha256=hashlib.sha256(encoded.data).hexdigest(),
        source_format=picture.source_format,
        load_seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------- image budget


def pixel_budget(
    settings: Settings, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> tuple[int, int]:
    """The effective ``(min_pixels, max_pixels)`` for one image.

    Requested values (default: the settings') are clamped to
    ``[PIXELS_PER_TOKEN, settings.max_pixels_ceiling]``; a minimum above the maximum is lowered
    to it, so asking only for a small maximum is never an error.
    """

    def clamp(value: int) -> int:
        return max(PIXELS_PER_TOKEN, min(value, settings.max_pixels_ceiling))

    high = clamp(settings.max_pixels if max_pixels is None else max_pixels)
    low = clamp(settings.min_pixels if min_pixels is None else min_pixels)
    return min(low, high), high


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """The ``(height, width)`` the Qwen2-VL processor resizes an image to.

    The rule of transformers 4.57.1 ``qwen2_vl.image_processing_qwen2_vl.smart_resize``, result
    for result: both sides become multiples of ``factor``, the area lands in
    ``[min_pixels, max_pixels]`` where the aspect ratio allows, and the aspect ratio is kept as
    closely as possible. Sides under ``factor`` are scaled up (1x1 becomes 56x56 at the default
    minimum). Only an aspect ratio above 200 is refused, as the reference does. Also as in the
    reference, an image too thin for ``max_pixels`` keeps its short side at ``factor`` and then
    exceeds ``max_pixels`` (by fewer than ``MAX_ASPECT_RATIO`` tokens).
    """
    if height <= 0 or width <= 0:
        raise InvalidInputImage(f"The image has no pixels ({width}x{height}).")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidInputImage(
            f"The image is {width}x{height} pixels: its aspect ratio "
            f"{max(height, width) / min(height, width):.0f}:1 is above the "
            f"{MAX_ASPECT_RATIO}:1 the model accepts. Crop or pad it first."
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# ---------------------------------------------------------------------------- reading sources


def read_source(
    source: ImageSource, settings: Settings, *, stdin: BinaryIO | None = None
) -> EncodedImage:
    """The encoded bytes of ``source``, at most ``settings.max_image_bytes`` long.

    Strings are told apart in this order: ``"-"`` (stdin), a URL scheme, ``data:``, an existing
    file, then base64 (:mod:`edgecap.inputs.base64text`). Messages say which kind was assumed.
    """
    limit = settings.max_image_bytes
    if isinstance(source, bytes):
        return EncodedImage(_capped(source, limit, "the image data"), "the image data")
    if isinstance(source, Path):
        return _read_file(source, limit)
    if not source.strip():
        raise InvalidInputImage("No image given: the image source is an empty string.")
    if source == "-":
        data = (stdin if stdin is not None else sys.stdin.buffer).read(limit + 1)
        if len(data) > limit:  # only read one byte past the limit: the real size is unknown
            raise too_many_bytes("stdin", None, limit)
        return EncodedImage(data, "stdin")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        data = fetching.fetch(source, settings, max_bytes=limit)
        return EncodedImage(data, f"the image downloaded from {_short(source)}")
    if source[:5].lower() == "data:":
        return EncodedImage(_decode_data_uri(source, limit), "the data URI")
    if _is_existing_path(source):
        return _read_file(Path(source), limit)
    return EncodedImage(_decode_plain_base64(source, limit), BASE64_TEXT)


def _read_file(path: Path, limit: int) -> EncodedImage:
    described = f"the file '{path}'"
    try:
        size = path.stat().st_size
        if size > limit:
            raise too_many_bytes(described, size, limit)
        return EncodedImage(path.read_bytes(), described)
    except FileNotFoundError as exc:
        raise InvalidInputImage(f"No such file: '{path}'. Check the path.") from exc
    except IsADirectoryError as exc:
        raise InvalidInputImage(f"'{path}' is a directory, not an image file.") from exc
    except OSError as exc:
        raise InvalidInputImage(f"Could not read {described}: {exc.strerror or exc}.") from exc


def _is_existing_path(text: str) -> bool:
    try:
        return Path(text).exists()
    except (OSError, ValueError):  # too long for a file name, or a NUL byte: not a path
        return False


def _decode_data_uri(uri: str, limit: int) -> bytes:
    header, comma, payload = uri.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise InvalidInputImage(
            "The data URI is not base64-encoded; send it as data:image/png;base64,<data>."
        )
    return decode_base64(payload, limit, "the data URI")


def _decode_plain_base64(text: str, limit: int) -> bytes:
    try:
        return decode_base64(text, limit, BASE64_TEXT)
    except InvalidInputImage:
        looks_like_path = len(text) < 1024 and ("/" in text or "\\" in text or "." in text)
        if looks_like_path:
            raise InvalidInputImage(
                f"No such file: '{_short(text)}' (the text is not a URL, data URI or base64 "
                "either). Check the path."
            ) from None
        raise


def _capped(data: bytes, limit: int, described: str) -> bytes:
    if len(data) > limit:
        raise too_many_bytes(described, len(data), limit)
    return data


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------- decoding


def decode_image(encoded: EncodedImage, settings: Settings) -> tuple[Image.Image, str]:
    """Decode the first frame as an upright RGB image at full size; also the format name.

    For callers that need the whole picture; :func:`load_image` decodes within its budget.
    Raises :class:`InvalidInputImage`.
    """
    with decoded(encoded, settings) as picture:
        return picture.image, picture.source_format


__all__ = [
    "BUILTIN_FORMATS",
    "EncodedImage",
    "decode_image",
    "decode_slot",
    "header_pixels",
    "load_image",
    "pixel_budget",
    "read_source",
    "smart_resize",
    "supported_formats",
    "to_rgb",
]
