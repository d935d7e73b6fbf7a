"""load_image: every source kind, every format and mode, every bad input, and the image budget."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import random
import struct
import sys
import types
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, features

from edgecap.config import PIXELS_PER_TOKEN, Settings
from edgecap.errors import DownloadFailed, InvalidInputImage
from edgecap.inputs.images import load_image, pixel_budget, smart_resize, supported_formats
from edgecap.records import LoadedImage
from tests.support.env import require
from tests.support.http import QuietHandler, base_url, serve
from tests.support.images import encoded, noise

TOKENS = PIXELS_PER_TOKEN  # pixels per image token, for readable budgets below
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def pixels(image: LoadedImage) -> np.ndarray:
    """The loaded RGB bytes as an (height, width, 3) array."""
    return np.frombuffer(image.rgb, dtype=np.uint8).reshape(image.height, image.width, 3)


def assert_colour(actual: Any, expected: tuple[int, int, int], tolerance: int = 8) -> None:
    difference = np.abs(np.asarray(actual, dtype=int) - np.asarray(expected))
    assert difference.max() <= tolerance, f"{tuple(actual)} is not {expected}"


# --------------------------------------------------------------------------- sources

PNG_84x56 = encoded(noise(84, 56), "PNG")  # 3x2 tokens: no resize under the default budget


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            found = self.path == "/cat.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG_84x56) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(PNG_84x56)

    with serve(Handler) as httpd:
        yield base_url(httpd)


def test_every_source_kind_gives_the_same_image(
    tmp_path: Path, settings: Settings, image_server: str
) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG_84x56)
    b64 = base64.b64encode(PNG_84x56).decode()
    url_settings = Settings(home=tmp_path, url_allowlist=["127.0.0.1"])
    loaded = [
        load_image(str(path), settings),
        load_image(path, settings),
        load_image(PNG_84x56, settings),
        load_image(f"data:image/png;base64,{b64}", settings),
        load_image(b64, settings),
        load_image("\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)), settings),
        load_image(base64.urlsafe_b64encode(PNG_84x56).decode().rstrip("="), settings),
        load_image("-", settings, stdin=io.BytesIO(PNG_84x56)),
        load_image(f"{image_server}/cat.png", url_settings),
    ]
    expected = np.asarray(Image.open(io.BytesIO(PNG_84x56)))
    for image in loaded:
        assert image.sha256 == hashlib.sha256(PNG_84x56).hexdigest()
        assert (image.width, image.height, image.tokens) == (84, 56, 6)
        assert (image.original_width, image.original_height) == (84, 56)
        assert image.source_format == "PNG"
        assert np.array_equal(pixels(image), expected)
        assert image.load_seconds >= 0


def test_url_needs_the_allowlist_for_loopback(settings: Settings, image_server: str) -> None:
    with pytest.raises(DownloadFailed, match="loopback address"):
        load_image(f"{image_server}/cat.png", settings)


def test_url_errors_are_download_failures(tmp_path: Path, image_server: str) -> None:
    with pytest.raises(DownloadFailed, match="HTTP 404"):
        load_image(f"{image_server}/dog.png", Settings(home=tmp_path, url_allowlist=["127.0.0.1"]))
    with pytest.raises(DownloadFailed, match="only http:// and https://"):
        load_image("ftp://example.com/cat.png", Settings(home=tmp_path))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing/cat.jpg", r"No such file: 'missing/cat.jpg'.*not a URL, data URI or base64"),
        ("", r"No image given"),
        ("   ", r"No image given"),
        ("data:image/png,%89PNG", r"data URI is not base64-encoded"),
        ("data:image/png;base64,@@@", r"The data URI is not valid base64"),
        ("aGVsbG8gd29ybGQ=", r"base64 text \(no file of that name exists\) is not an image"),
        ("not base64 at all!", r"base64 text \(no file of that name exists\) is not valid base64"),
    ],
)
def test_bad_sources_say_what_was_assumed(settings: Settings, source: str, message: str) -> None:
    with pytest.raises(InvalidInputImage, match=message) as info:
        load_image(source, settings)
    assert info.value.code == "invalidInputImage" and info.value.status == 400


def test_directory_is_not_an_image(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(InvalidInputImage, match="is a directory"):
        load_image(tmp_path, settings)


def test_byte_limit_applies_to_every_source(tmp_path: Path) -> None:
    small = Settings(home=tmp_path, max_image_bytes=100)
    path = tmp_path / "cat.png"
    path.write_bytes(PNG_84x56)
    b64 = base64.b64encode(PNG_84x56).decode()
    sources: list[tuple[str | bytes | Path, io.BytesIO | None]] = [
        (PNG_84x56, None),
        (path, None),
        (b64, None),
        (f"data:image/png;base64,{b64}", None),
        ("-", io.BytesIO(PNG_84x56)),
    ]
    for source, stdin in sources:
        with pytest.raises(InvalidInputImage, match=r"limit is 100 bytes.*EDGECAP_MAX_IMAGE_BYTES"):
            load_image(source, small, stdin=stdin)


# --------------------------------------------------------------------------- bad data


def test_empty_bytes(settings: Settings) -> None:
    with pytest.raises(InvalidInputImage, match=r"The image data is empty \(0 bytes\)"):
        load_image(b"", settings)
    with pytest.raises(InvalidInputImage, match=r"Stdin is empty"):
        load_image("-", settings, stdin=io.BytesIO(b""))


def test_random_bytes(settings: Settings) -> None:
    junk = np.random.default_rng(1).bytes(5000)
    with pytest.raises(InvalidInputImage, match=r"not an image in a supported format \(JPEG, PNG"):
        load_image(junk, settings)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(settings: Settings, fmt: str) -> None:
    data = encoded(noise(300, 200), fmt)
    with pytest.raises(InvalidInputImage, match=rf"truncated or corrupt \({fmt}:"):
        load_image(data[: len(data) // 2], settings)


def test_formats_outside_the_list_are_refused(settings: Settings) -> None:
    """Pillow reads PPM, ICO, EPS and more; we decode photo formats only."""
    for fmt in ("PPM", "ICO", "TGA"):
        with pytest.raises(InvalidInputImage, match="not an image in a supported format"):
            load_image(encoded(noise(32, 32), fmt), settings)


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims another size (IHDR patched, CRC fixed)."""
    data = bytearray(encoded(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_bomb_refused_from_the_header(settings: Settings) -> None:
    # 81 MP: above our 24 MP limit, below Pillow's own warning threshold (89 MP).
    with pytest.raises(InvalidInputImage, match=r"9000x9000 pixels \(81 MP\), above the 24 MP"):
        load_image(png_claiming(9000, 9000), settings)


def test_pillow_bomb_error_is_translated(tmp_path: Path) -> None:
    # 10,000 MP: Pillow itself refuses it in Image.open, even with our limit raised.
    lenient = Settings(home=tmp_path, max_image_megapixels=1e6)
    with pytest.raises(InvalidInputImage, match="too large to decode safely"):
        load_image(png_claiming(100_000, 100_000), lenient)


def test_patched_header_within_limits_fails_as_truncated(settings: Settings) -> None:
    """The crafted files above are rejected by size, not because they fail to decode."""
    with pytest.raises(InvalidInputImage, match="truncated or corrupt"):
        load_image(png_claiming(300, 300), settings)


# --------------------------------------------------------------------------- formats and modes


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {})],
)
def test_lossless_formats_round_trip(settings: Settings, fmt: str, options: Any) -> None:
    original = noise(84, 56, seed=3)
    image = load_image(encoded(original, fmt, **options), settings)
    assert image.source_format == fmt
    assert np.array_equal(pixels(image), np.asarray(original))


def test_jpeg(settings: Settings) -> None:
    image = load_image(encoded(Image.new("RGB", (84, 56), RED), "JPEG"), settings)
    assert image.source_format == "JPEG"
    assert_colour(pixels(image)[28, 42], RED)


def test_cmyk_jpeg(settings: Settings) -> None:
    cmyk = Image.new("CMYK", (84, 56), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    image = load_image(encoded(cmyk, "JPEG"), settings)
    assert_colour(pixels(image)[28, 42], RED)


def test_sixteen_bit_png_is_scaled_not_clipped(settings: Settings) -> None:
    values = np.full((56, 84), 65535, dtype=np.uint16)
    values[:, 42:] = 32896  # 128 * 257
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    image = load_image(encoded(source, "PNG"), settings)
    assert_colour(pixels(image)[10, 10], WHITE, tolerance=0)
    assert_colour(pixels(image)[10, 70], (128, 128, 128), tolerance=0)  # convert() gives 255


def test_thirty_two_bit_integer_mode(settings: Settings) -> None:
    values = np.full((56, 84), 32896, dtype=np.int32)  # 128 * 257
    values[:, 42:] = -5  # out of range: clipped to black
    data = encoded(Image.fromarray(values, mode="I"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    image = load_image(data, settings)
    assert_colour(pixels(image)[10, 10], (128, 128, 128), tolerance=0)
    assert_colour(pixels(image)[10, 70], (0, 0, 0), tolerance=0)


@pytest.mark.parametrize(("mode", "value"), [("L", 77), ("1", 255)])
def test_greyscale_and_bilevel(settings: Settings, mode: str, value: int) -> None:
    image = load_image(encoded(Image.new(mode, (84, 56), value), "PNG"), settings)
    assert_colour(pixels(image)[28, 42], (value, value, value), tolerance=0)


def test_alpha_is_composited_on_white(settings: Settings) -> None:
    rgba = Image.new("RGBA", (84, 56), (0, 0, 0, 0))  # transparent black
    rgba.paste((255, 0, 0, 255), (0, 0, 42, 56))  # opaque red left half
    image = load_image(encoded(rgba, "PNG"), settings)
    assert_colour(pixels(image)[28, 10], RED, tolerance=0)
    assert_colour(pixels(image)[28, 70], WHITE, tolerance=0)


def test_grey_with_alpha(settings: Settings) -> None:
    la = Image.new("LA", (84, 56), (0, 128))  # black at half opacity
    image = load_image(encoded(la, "PNG"), settings)
    assert_colour(pixels(image)[28, 42], (127, 127, 127), tolerance=1)


def test_palette_with_transparency_on_white(settings: Settings) -> None:
    palette = Image.new("P", (84, 56), 0)
    palette.putpalette([0, 0, 0] + list(BLUE) + [0] * 762)  # index 0 black, 1 blue
    palette.paste(1, (0, 0, 42, 56))
    palette.info["transparency"] = 0
    image = load_image(encoded(palette, "PNG", transparency=0), settings)
    assert_colour(pixels(image)[28, 10], BLUE, tolerance=0)
    assert_colour(pixels(image)[28, 70], WHITE, tolerance=0)  # not black


def test_animated_gif_uses_the_first_frame(settings: Settings) -> None:
    frames = [Image.new("RGB", (84, 56), colour) for colour in (RED, BLUE, GREEN)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    image = load_image(data, settings)
    assert image.source_format == "GIF"
    assert_colour(pixels(image)[28, 42], RED)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF decoder")
def test_avif(settings: Settings) -> None:
    image = load_image(encoded(Image.new("RGB", (84, 56), GREEN), "AVIF", quality=90), settings)
    assert image.source_format == "AVIF"
    assert_colour(pixels(image)[28, 42], GREEN, tolerance=12)


@pytest.mark.skipif("HEIF" in supported_formats(), reason="pillow-heif is installed")
def test_heic_without_plugin_says_what_to_install(settings: Settings) -> None:
    ftyp = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    with pytest.raises(InvalidInputImage, match=r"is a HEIC image.*pip install 'edgecap\[heif\]'"):
        load_image(ftyp + b"\x00" * 200, settings)


# --------------------------------------------------------------------------- EXIF orientation


def displayed_scene() -> np.ndarray:
    """84 tall x 56 wide, grey, with a red top-left and a green top-right corner block."""
    scene = np.full((84, 56, 3), 128, dtype=np.uint8)
    scene[:14, :14] = RED
    scene[:14, -14:] = GREEN
    return scene


# How a camera stores the displayed scene for each EXIF orientation (the inverse of what a
# viewer does): written out with numpy, independently of Pillow's own table.
STORED_AS = {
    1: lambda d: d,
    2: np.fliplr,
    3: lambda d: np.rot90(d, 2),
    4: np.flipud,
    5: lambda d: d.transpose(1, 0, 2),
    6: lambda d: np.rot90(d, 1),  # the viewer rotates 90 degrees clockwise
    7: lambda d: np.rot90(d, 2).transpose(1, 0, 2),
    8: lambda d: np.rot90(d, -1),  # the viewer rotates 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_exif_orientation_is_applied(settings: Settings, orientation: int) -> None:
    stored = Image.fromarray(np.ascontiguousarray(STORED_AS[orientation](displayed_scene())))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = load_image(encoded(stored, "JPEG", exif=exif.tobytes(), quality=95), settings)
    assert (image.width, image.height) == (56, 84)
    assert (image.original_width, image.original_height) == (56, 84)
    upright = pixels(image)
    assert_colour(upright[5, 5], RED, tolerance=24)
    assert_colour(upright[5, 50], GREEN, tolerance=24)
    assert_colour(upright[78, 5], (128, 128, 128), tolerance=24)


# --------------------------------------------------------------------------- budget


@pytest.mark.parametrize(
    ("size", "max_tokens", "expected"),
    [
        # (width, height), max tokens -> (width, height, tokens); checked against transformers
        # below, and matching docs/qwen25vl-gguf.md.
        ((1024, 768), 4096, (1036, 756, 999)),
        ((1024, 768), 1024, (1036, 756, 999)),
        ((4000, 3000), 4096, (2044, 1540, 4015)),
        ((4000, 3000), 1024, (1008, 756, 972)),
        ((1, 1), 1024, (56, 56, 4)),
        ((20, 20), 1024, (56, 56, 4)),
        ((10, 1999), 1024, (28, 812, 29)),
    ],
)
def test_budget_examples(size: tuple[int, int], max_tokens: int, expected: Any) -> None:
    height, width = smart_resize(size[1], size[0], max_pixels=max_tokens * TOKENS)
    assert (width, height, (width // 28) * (height // 28)) == expected


@pytest.mark.slow
def test_twelve_megapixel_photo_end_to_end(tmp_path: Path) -> None:
    photo = encoded(Image.new("RGB", (4000, 3000), BLUE), "PNG")
    at_ceiling = load_image(photo, Settings(home=tmp_path), max_pixels=4096 * TOKENS)
    by_default = load_image(photo, Settings(home=tmp_path))
    assert (at_ceiling.width, at_ceiling.height, at_ceiling.tokens) == (2044, 1540, 4015)
    assert (by_default.width, by_default.height, by_default.tokens) == (1008, 756, 972)
    assert (by_default.original_width, by_default.original_height) == (4000, 3000)
    assert len(by_default.rgb) == 1008 * 756 * 3


def test_tiny_image_is_upscaled(settings: Settings) -> None:
    image = load_image(encoded(Image.new("RGB", (1, 1), RED), "PNG"), settings)
    assert (image.width, image.height, image.tokens) == (56, 56, 4)
    assert_colour(pixels(image)[0, 0], RED, tolerance=0)


def test_extreme_aspect_ratio_is_refused(settings: Settings) -> None:
    with pytest.raises(InvalidInputImage, match=r"20000x1 pixels.*20000:1 is above the 200:1"):
        load_image(encoded(Image.new("L", (20000, 1)), "PNG"), settings)
    assert load_image(encoded(Image.new("L", (200, 1)), "PNG"), settings).height == 28


def test_pixel_budget_clamps_requests(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert pixel_budget(settings) == (4 * TOKENS, 1024 * TOKENS)
    assert pixel_budget(settings, min_pixels=1, max_pixels=10**9) == (TOKENS, 4096 * TOKENS)
    # Asking only for a small maximum lowers the default minimum with it.
    assert pixel_budget(settings, max_pixels=2 * TOKENS) == (2 * TOKENS, 2 * TOKENS)
    low_ceiling = Settings(home=tmp_path, max_pixels_ceiling=256 * TOKENS)
    assert pixel_budget(low_ceiling, max_pixels=4096 * TOKENS) == (4 * TOKENS, 256 * TOKENS)


def test_request_budget_reaches_the_resize(settings: Settings) -> None:
    image = load_image(PNG_84x56, settings, max_pixels=2 * TOKENS)
    assert (image.width, image.height) == (28, 28)  # floor() in the reference rule: 1 token
    image = load_image(PNG_84x56, settings, min_pixels=24 * TOKENS)
    assert image.tokens >= 24


# --------------------------------------------------------------------------- the reference


def random_sizes(count: int) -> list[tuple[int, int, int, int]]:
    """(height, width, min_pixels, max_pixels): small, huge, thin and square images."""
    rng = random.Random(1234)
    sizes = []
    for _ in range(count):
        height = rng.choice([rng.randint(1, 40), rng.randint(1, 8000)])
        width = rng.choice([rng.randint(1, 40), rng.randint(1, 8000), height])
        if max(height, width) / min(height, width) > 200:
            width = height * rng.randint(100, 200) + rng.randint(0, 1)
        high = rng.choice([1, 4, 64, 1024, 4096]) * TOKENS
        low = min(rng.choice([1, 4, 16]) * TOKENS, high)
        sizes.append((height, width, low, high))
    return sizes


@pytest.mark.model
def test_smart_resize_matches_transformers() -> None:
    reference = require("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    cases = [*random_sizes(250), (1, 1, 4 * TOKENS, 1024 * TOKENS), (1, 250, TOKENS, TOKENS)]
    for height, width, low, high in cases:
        try:
            expected = reference.smart_resize(height, width, 28, low, high)
        except ValueError:
            with pytest.raises(InvalidInputImage, match="aspect ratio"):
                smart_resize(height, width, 28, low, high)
            continue
        ours = smart_resize(height, width, 28, low, high)
        assert ours == expected, (height, width, low, high)
        assert ours[0] % 28 == 0 and ours[1] % 28 == 0 and min(ours) >= 28
        # The documented bound: never more than MAX_ASPECT_RATIO tokens over the maximum.
        assert (ours[0] // 28) * (ours[1] // 28) < high // TOKENS + 200


def unpatchify(patches: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Undo Qwen2VLImageProcessor's patch flattening: (patches, 3*2*14*14) -> (H, W, 3)."""
    _, grid_h, grid_w = (int(n) for n in grid)
    blocks = patches.reshape(grid_h // 2, grid_w // 2, 2, 2, 3, 2, 14, 14)[:, :, :, :, :, 0]
    # axes now: block row, block col, row in block, col in block, channel, y, x
    channels_first = blocks.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, grid_h * 14, grid_w * 14)
    return channels_first.transpose(1, 2, 0)


@pytest.mark.parametrize(
    ("width", "height", "max_tokens"), [(300, 200, 1024), (1000, 700, 256), (50, 90, 1024)]
)
@pytest.mark.model
def test_pixels_match_the_reference_processor(
    settings: Settings, width: int, height: int, max_tokens: int
) -> None:
    processing = require("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    source = noise(width, height, seed=width)
    low, high = 4 * TOKENS, max_tokens * TOKENS
    processor = processing.Qwen2VLImageProcessor(min_pixels=low, max_pixels=high)
    out = processor(images=[source], do_rescale=False, do_normalize=False, return_tensors="np")
    reference = unpatchify(out["pixel_values"], out["image_grid_thw"][0])

    ours = load_image(encoded(source, "PNG"), settings, min_pixels=low, max_pixels=high)
    assert reference.shape == (ours.height, ours.width, 3)
    assert np.array_equal(pixels(ours), reference.astype(np.uint8))


def test_optional_heif_plugin_is_registered_when_importable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered: list[bool] = []
    fake = types.ModuleType("pillow_heif")
    fake.register_heif_opener = lambda: registered.append(True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pillow_heif", fake)
    supported_formats.cache_clear()
    try:
        assert "HEIF" in supported_formats()
        assert registered == [True]
    finally:
        monkeypatch.delitem(sys.modules, "pillow_heif")
        supported_formats.cache_clear()
    heif_installed = importlib.util.find_spec("pillow_heif") is not None
    assert ("HEIF" in supported_formats()) == heif_installed  # the fake is gone again
