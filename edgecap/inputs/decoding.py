"""Decoding within bounds: how much of an image is decoded, and how much decodes at once.

- **Guard before decoding**: ``Image.open`` reads only the header. JPEG files are first asked to
  decode at a reduced scale (``draft``: the DCT scaling of libjpeg, 1/2 to 1/8) when the budget
  needs far fewer pixels; the size that will really be decoded is then checked against
  ``settings.max_image_megapixels``.
- **Reduce early**: an image far larger than needed is box-reduced (``Image.reduce``) right
  after decoding, before colour conversion, so conversions and compositing work on the small
  copy. 16-bit images are scaled to 8 bits in integer arithmetic, a band of rows at a time
  (never a float64 copy); alpha is composited onto white with one paste.
- **Pixels in flight**: every decode holds its pixel count from ``settings.
  decode_megapixels_in_flight`` (a counting semaphore over pixels, shared by every request in
  the process) until it is done; a decode that cannot get its share within
  :data:`DECODE_WAIT_S` is refused with ``rateLimitExceeded``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from edgecap.config import Settings
from edgecap.errors import InvalidInputImage, RateLimited
from edgecap.inputs.base64text import sentence_start

# Formats Pillow decodes itself. Everything else Pillow could open (EPS calls Ghostscript,
# PSD, ICO, ...) is refused: less attack surface, and none of it is a photo format.
BUILTIN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
OVERSAMPLE = 4  # decode at least this many times the pixels the budget needs (area)
DECODE_WAIT_S = 30.0
ROW_BAND = 64  # rows converted at a time from 16 to 8 bits
REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "PA"})


@dataclass(frozen=True)
class EncodedImage:
    """The bytes of an image as received, and how messages should name where they came from."""

    data: bytes
    described: str  # e.g. "the file 'cat.jpg'", "the data URI"


@dataclass(frozen=True)
class Decoded:
    """An upright RGB picture, possibly reduced, and the size its file declares."""

    image: Image.Image
    source_format: str
    original_size: tuple[int, int]  # (width, height) after the EXIF orientation


class PixelBudget:
    """A counting semaphore over pixels: decodes in flight hold their pixel counts."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, wait_s: float = DECODE_WAIT_S) -> Iterator[None]:
        share = max(1, min(pixels, self.capacity))  # a huge image waits for the whole budget
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + share <= self.capacity, wait_s):
                raise RateLimited(
                    "The server is decoding too many large images at once; try again in a "
                    "few seconds, or send a smaller image.",
                    retry_after=5,
                )
            self.in_use += share
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= share
                self._cond.notify_all()


@functools.cache
def pixel_budget_for(capacity: int) -> PixelBudget:
    """The process-wide budget of a given capacity (one per setting value)."""
    return PixelBudget(capacity)


def decode_slot(settings: Settings, pixels: int) -> contextlib.AbstractContextManager[None]:
    """Hold ``pixels`` of ``settings.decode_megapixels_in_flight`` while decoding."""
    capacity = int(settings.decode_megapixels_in_flight * 1_000_000)
    return pixel_budget_for(capacity).hold(pixels)


def header_pixels(encoded: EncodedImage) -> int:
    """The pixel count an image's header declares (0 if it cannot be read)."""
    try:
        with Image.open(io.BytesIO(encoded.data), formats=supported_formats()) as image:
            return int(image.width * image.height)
    except Exception:
        return 0


@contextlib.contextmanager
def decoded(
    encoded: EncodedImage, settings: Settings, *, target_pixels: int | None = None
) -> Iterator[Decoded]:
    """The first frame, upright and RGB, holding its pixels of the decode budget while the
    caller uses it. With ``target_pixels`` the picture may be decoded or reduced to no fewer
    than :data:`OVERSAMPLE` times that many pixels. Raises :class:`InvalidInputImage`.
    """
    what = encoded.described
    if not encoded.data:
        raise InvalidInputImage(f"{sentence_start(what)} is empty (0 bytes).")
    image = open_lazily(encoded)
    declared = image.size
    if target_pixels is not None and image.format == "JPEG":
        _draft(image, target_pixels)
    width, height = image.size
    limit = settings.max_image_megapixels
    if width * height > limit * 1_000_000:
        raise InvalidInputImage(
            f"{sentence_start(what)} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), "
            f"above the {limit:g} MP limit (max_image_megapixels / "
            "EDGECAP_MAX_IMAGE_MEGAPIXELS). Downscale it first."
        )
    source_format = image.format or ""
    with decode_slot(settings, width * height):
        try:
            image.load()
            picture = _prepare(image, target_pixels)
        # Pillow's decoders raise many exception types on malformed input (OSError,
        # SyntaxError, struct.error, IndexError, ...); none may reach the user as a traceback.
        except Exception as exc:
            raise InvalidInputImage(
                f"{sentence_start(what)} is truncated or corrupt ({source_format}: {exc}). "
                "Re-export or re-download the image."
            ) from exc
        original = _upright_size(image, declared)
        yield Decoded(picture, source_format, original)


def _draft(image: Image.Image, target_pixels: int) -> None:
    """Ask libjpeg to decode at the smallest scale that keeps OVERSAMPLE x the target."""
    width, height = image.size
    scale = math.sqrt(OVERSAMPLE * target_pixels / (width * height))
    if scale < 0.5:
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))


def _prepare(image: Image.Image, target_pixels: int | None) -> Image.Image:
    """8-bit, reduced toward the target, RGB, upright — cheapest steps first."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = sixteen_bit_to_grey(image)
    if target_pixels is not None and image.mode in REDUCIBLE_MODES:
        factor = math.isqrt(image.width * image.height // (OVERSAMPLE * target_pixels) or 1)
        if factor >= 2:
            image = image.reduce(factor)
    return to_rgb(ImageOps.exif_transpose(image))


def _upright_size(image: Image.Image, declared: tuple[int, int]) -> tuple[int, int]:
    """The declared size, turned as the EXIF orientation turns the picture."""
    orientation = image.getexif().get(0x0112, 1)
    return (declared[1], declared[0]) if orientation in (5, 6, 7, 8) else declared


def open_lazily(encoded: EncodedImage) -> Image.Image:
    """``Image.open``: reads the header only; refuses formats outside our list."""
    what = encoded.described
    try:
        return Image.open(io.BytesIO(encoded.data), formats=supported_formats())
    except Image.DecompressionBombError as exc:
        raise InvalidInputImage(
            f"{sentence_start(what)} is too large to decode safely ({exc}). Downscale it first."
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidInputImage(
            _missing_plugin_hint(encoded.data, what)
            or f"{sentence_start(what)} is not an image in a supported format "
            f"({', '.join(supported_formats())})."
        ) from exc
    except Exception as exc:  # a recognised header that fails to parse: see decode_image
        raise InvalidInputImage(f"{sentence_start(what)} has a corrupt header ({exc}).") from exc


@functools.cache
def supported_formats() -> tuple[str, ...]:
    """Pillow format names we decode: the built-in list, plus HEIF/AVIF when available.

    Registers the optional ``pillow-heif`` / ``pillow-avif-plugin`` openers on first call.
    """
    formats = list(BUILTIN_FORMATS)
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        pillow_heif.register_heif_opener()
        formats.append("HEIF")
    if features.check("avif"):  # recent Pillow wheels decode AVIF themselves
        formats.append("AVIF")
    else:
        try:
            import pillow_avif  # type: ignore[import-not-found]  # noqa: F401  (registers itself)
        except ImportError:
            pass
        else:
            formats.append("AVIF")
    return tuple(formats)


# ISO-BMFF brands (the "ftyp" box) -> (what to call the file, the edgecap extra decoding it).
# The extras are named after the Pillow format they add ("heif" -> "HEIF").
FTYP_BRANDS = {
    b"avif": ("AVIF", "avif"),
    b"avis": ("AVIF", "avif"),
    **{brand: ("HEIC", "heif") for brand in (b"heic", b"heix", b"heim", b"heis", b"hevc")},
    **{brand: ("HEIF", "heif") for brand in (b"mif1", b"msf1")},
}


def _missing_plugin_hint(data: bytes, described: str) -> str | None:
    """If ``data`` is a HEIC/AVIF file we cannot decode, the message saying what to install."""
    if data[4:8] != b"ftyp":
        return None
    box_size = int.from_bytes(data[0:4], "big")
    brands = [data[8:12]] + [data[i : i + 4] for i in range(16, min(box_size, 64), 4)]
    known = [FTYP_BRANDS[b] for b in brands if b in FTYP_BRANDS]
    if not known:
        return None
    # AVIF files also carry the generic HEIF brand "mif1": prefer the specific one.
    kind, extra = next((k for k in known if k[0] == "AVIF"), known[0])
    if extra.upper() in supported_formats():  # decodable, so something else is wrong
        return None
    return (
        f"{sentence_start(described)} is a {kind} image, which needs an optional decoder: "
        f"pip install 'edgecap[{extra}]'."
    )


# ---------------------------------------------------------------------------- colour


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: alpha composited on white, 16-bit scaled down."""
    convert = MODE_CONVERTERS.get(image.mode)
    if convert is not None:
        return convert(image)
    if "transparency" in image.info:  # a palette, or a PNG with one transparent colour
        return _composite_on_white(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Paste onto a white RGB canvas through the alpha channel (no full-size RGBA copies
    beyond the one a palette or premultiplied image needs to be read as RGBA)."""
    if image.mode not in ("RGBA", "LA"):
        image = image.convert("RGBA")
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image.convert("RGB") if image.mode == "LA" else image, mask=image.getchannel("A"))
    return canvas


def sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit ``I``) grey image as 8-bit ``L``: round(v / 257), clipped to
    0..65535, in integer arithmetic a band of rows at a time.

    Pillow's own convert() clips 16-bit values at 255 (a near-white image); scale instead.
    32-bit "I" images come from 16-bit PNG/TIFF files, so they get the same 0..65535 range.
    """
    values = np.asarray(image)
    out = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, values.shape[0], ROW_BAND):
        band = values[start : start + ROW_BAND].astype(np.int32)
        np.clip(band, 0, 65535, out=band)
        out[start : start + ROW_BAND] = (band + 128) // 257
    return Image.fromarray(out, mode="L")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    return sixteen_bit_to_grey(image).convert("RGB")


SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
MODE_CONVERTERS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "RGBA": _composite_on_white,
    "RGBa": _composite_on_white,
    "LA": _composite_on_white,
    "La": _composite_on_white,
    "PA": _composite_on_white,
    **dict.fromkeys(SIXTEEN_BIT_MODES, _sixteen_bit_to_rgb),
}
