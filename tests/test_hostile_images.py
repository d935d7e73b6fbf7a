"""Issue 9, the hostile-image corpus: built here, each file sent to a real ``edgecap serve``
(tiny model) as an inline caption; each must be refused (400) or captioned (200) within the
request deadline, and the server's peak memory must stay bounded.

The corpus: decompression bombs in PNG, GIF, WebP and TIFF (headers claiming huge sizes, and
highly compressed giants just under the limit), 16-bit and RGBA giants, truncated files,
polyglots (HTML/ZIP after the image, script in a JPEG comment), huge ICC/EXIF/text chunks,
and animations of thousands of frames. ``CORPUS_REPORT`` lists what happened to each.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image, PngImagePlugin

from edgecap.records import ModelFiles
from tests.support.server_process import ServerProcess, register

REQUEST_TIMEOUT_S = 120.0
PEAK_RSS_LIMIT_MB = 600.0  # the server process, tiny model's engine not included
# (measured: 354 MB on main, 705 MB on the code before issue 9's decode budget)
CORPUS_REPORT: list[tuple[str, int, float, str]] = []


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of(width: int, height: int, color_type: int, depth: int, row_bytes: int) -> bytes:
    """A PNG of zeros, compressed row by row (never held decoded)."""
    squeeze = zlib.compressobj(9)
    row = b"\0" * (row_bytes + 1)
    idat = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gif_header_bomb() -> bytes:
    small = saved(Image.new("P", (8, 8)), "GIF")
    return small[:6] + struct.pack("<HH", 65535, 65535) + small[10:]


def webp_header_bomb() -> bytes:
    bits = (16383 - 1) | ((16383 - 1) << 14)  # VP8L: 14-bit width-1 and height-1
    payload = b"\x2f" + struct.pack("<I", bits) + b"\0" * 32
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def tiff_header_bomb() -> bytes:
    entries = [
        (256, 4, 1, 200000),
        (257, 4, 1, 200000),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (279, 4, 1, 1),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries
    )
    return b"II*\0" + struct.pack("<I", 16) + b"\0" * 8 + ifd + b"\0\0\0\0"


def frames(count: int, fmt: str) -> bytes:
    first = Image.new("P", (16, 16))
    others = [Image.new("P", (16, 16), i % 256) for i in range(1, count)]
    return saved(first, fmt, save_all=True, append_images=others, duration=10)


def huge_text_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    for index in range(40):
        info.add_text(f"k{index}", "x" * 900_000, zip=True)  # 36 MB of text, compressed
    return saved(Image.new("RGB", (32, 32)), "PNG", pnginfo=info)


def huge_icc_png() -> bytes:
    return saved(Image.new("RGB", (32, 32)), "PNG", icc_profile=b"\0" * 20_000_000)


def huge_exif_jpeg() -> bytes:
    jpeg = saved(Image.new("RGB", (32, 32)), "JPEG")
    app1 = b"\xff\xe1" + struct.pack(">H", 65535) + b"Exif\0\0" + b"\0" * 65527
    return jpeg[:2] + app1 * 300 + jpeg[2:]  # 20 MB of APP1 segments


def polyglot_zip_png() -> bytes:
    return saved(Image.new("RGB", (40, 30)), "PNG") + b"PK\x03\x04" + b"<html>" * 1000


def script_in_jpeg_comment() -> bytes:
    jpeg = saved(Image.new("RGB", (40, 30)), "JPEG")
    comment = b"<?php system($_GET['c']); ?><script>alert(1)</script>"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


CORPUS: dict[str, Callable[[], bytes]] = {
    "png header bomb 100k x 100k": lambda: png_of(100_000, 100_000, 0, 8, 0)[:33] + b"\0" * 64,
    "png 23 MP RGBA of zeros (~100 KB)": lambda: png_of(4800, 4800, 6, 8, 4800 * 4),
    "png 23 MP 16-bit grey": lambda: png_of(4800, 4800, 0, 16, 4800 * 2),
    "png 23 MP 16-bit RGBA": lambda: png_of(4800, 4800, 6, 16, 4800 * 8),
    "gif header bomb 65535 x 65535": gif_header_bomb,
    "webp header bomb 16383 x 16383": webp_header_bomb,
    "tiff header bomb 200000 x 200000": tiff_header_bomb,
    "tiff 16-bit 4000 x 4000 deflate": lambda: saved(
        Image.new("I;16", (4000, 4000)), "TIFF", compression="tiff_adobe_deflate"
    ),
    "jpeg 40 MP (draft-decoded)": lambda: saved(Image.new("RGB", (8000, 5000)), "JPEG"),
    "truncated png": lambda: saved(Image.new("RGB", (300, 300), (1, 2, 3)), "PNG")[:400],
    "truncated jpeg": lambda: saved(Image.effect_noise((300, 300), 50).convert("RGB"), "JPEG")[
        :2000
    ],
    "polyglot png + zip/html": polyglot_zip_png,
    "script in a jpeg comment": script_in_jpeg_comment,
    "png with 36 MB of zTXt": huge_text_png,
    "png with a 20 MB ICC profile": huge_icc_png,
    "jpeg with 20 MB of EXIF segments": huge_exif_jpeg,
    "gif of 3000 frames": lambda: frames(3000, "GIF"),
    "apng of 2000 frames": lambda: frames(2000, "PNG"),
    "empty": lambda: b"",
    "random bytes": lambda: bytes(range(256)) * 40,
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_files: ModelFiles
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("corpus-home")
    register(home, tiny_model_files)
    env = {"EDGECAP_N_THREADS": "2", "EDGECAP_MAX_TOKENS": "4"}
    process = ServerProcess(home, env).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_hostile_image_is_refused_or_captioned(server: ServerProcess, name: str) -> None:
    data = CORPUS[name]()
    task = {
        "taskType": "caption",
        "taskUUID": str(uuid.uuid4()),
        "inputs": {"image": base64.b64encode(data).decode() or "=="},
        "maxTokens": 1,
        "maxPixels": 4 * 28 * 28,  # decoding is under test, not the engine: 4 image tokens
    }
    started = time.monotonic()
    answer = httpx.post(server.url, json=[task], timeout=REQUEST_TIMEOUT_S)
    elapsed = time.monotonic() - started
    code = answer.json()["errors"][0]["code"] if answer.status_code != 200 else "captioned"
    CORPUS_REPORT.append((name, answer.status_code, elapsed, code))
    assert answer.status_code in (200, 400), answer.text[:300]
    if answer.status_code == 400:
        assert code == "invalidInputImage", answer.text[:300]
    assert server.peak_rss_mb() < PEAK_RSS_LIMIT_MB


def test_the_server_survived_the_corpus_with_bounded_memory(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    ping = httpx.post(server.url, json=[{"taskType": "ping", "ping": True}], timeout=30)
    assert ping.status_code == 200
    peak = server.peak_rss_mb()
    with capsys.disabled():
        print(f"\nhostile corpus: {len(CORPUS_REPORT)} files, server peak RSS {peak:.0f} MB")
        for name, status, seconds, code in CORPUS_REPORT:
            print(f"  {status} {code:<18} {seconds:6.2f} s  {name}")
    assert len(CORPUS_REPORT) == len(CORPUS)
