"""Images sent with ``imageUpload``: stored under ``settings.uploads_dir``, captioned by UUID.

An upload is decoded once to check that it is an image we can read; an image larger than
:data:`MAX_SIDE` on its long side is stored downscaled (as Runware does), anything else is
stored byte for byte, so that the engine's image cache (keyed by the bytes' sha256) recognises
the same picture sent again. Each file's modification time records its last use; files unused
for ``settings.upload_retention_days`` are deleted by :meth:`UploadStore.purge_unused`.
"""

from __future__ import annotations

import io
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from edgecap.config import Settings
from edgecap.errors import EdgecapError, MediaNotFound
from edgecap.fsutil import write_bytes_atomic
from edgecap.inputs import images
from edgecap.inputs.base64text import decode_base64

MAX_SIDE = 2048
JPEG_QUALITY = 95
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
# Pillow format -> (file extension, Content-Type) of an upload stored as sent.
FORMATS = {
    "JPEG": ("jpg", "image/jpeg"),
    "MPO": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
    "BMP": ("bmp", "image/bmp"),
    "TIFF": ("tiff", "image/tiff"),
    "AVIF": ("avif", "image/avif"),
    "HEIF": ("heic", "image/heic"),
}
WIRE_FIX = (
    "Send the image file's bytes in base64, a data:image/...;base64 URI, an http(s) URL, or the "
    "UUID of an uploaded image."
)
CONTENT_TYPES = {ext: content_type for ext, content_type in FORMATS.values()}


def is_media_uuid(text: str) -> bool:
    """Whether an image source names an upload (a UUID) rather than carrying the image."""
    return bool(UUID_TEXT.fullmatch(text))


def is_url(text: str) -> bool:
    return bool(URL_SCHEME.match(text))


def wire_image(text: str, settings: Settings) -> str | bytes:
    """An image string from a client, as something :func:`images.load_image` reads safely.

    ``load_image`` also reads file paths and stdin, which a remote client must never reach:
    URLs and data URIs pass through as text; anything else is plain base64, decoded here under
    the one base64 rule (:mod:`edgecap.inputs.base64text`).
    """
    if is_url(text) or text[:5].lower() == "data:":
        return text
    return decode_base64(text, settings.max_image_bytes, "the image", fix=WIRE_FIX)


class UploadStore:
    """Uploaded images as files named ``<uuid>.<ext>``; their mtime is their last use."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.root = settings.uploads_dir
        self.clock = clock

    def save(self, source: str) -> str:
        """Read, check and store an image (data URI, base64 or URL); return its new UUID.

        Raises InvalidInputImage (not an image, too large) or DownloadFailed (URL).
        """
        try:
            readable = wire_image(source, self.settings)
            encoded = images.read_source(readable, self.settings)
            picture, source_format = images.decode_image(encoded, self.settings)
        except EdgecapError as exc:
            exc.parameter = exc.parameter or "image"
            raise
        if max(picture.size) > MAX_SIDE or source_format not in FORMATS:
            picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
            data, ext = buffer.getvalue(), "jpg"
        else:
            data, ext = encoded.data, FORMATS[source_format][0]
        image_uuid = str(uuid.uuid4())
        self.root.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.root / f"{image_uuid}.{ext}", data)
        return image_uuid

    def path(self, image_uuid: str, *, parameter: str = "imageUUID") -> Path:
        """The stored file of an upload, marked as used now. Raises MediaNotFound."""
        if is_media_uuid(image_uuid):
            for path in self.root.glob(f"{image_uuid.lower()}.*"):
                now = self.clock()
                os.utime(path, (now, now))
                return path
        raise MediaNotFound(
            f"No uploaded image has the UUID {image_uuid[:80]!r}. Uploads are kept for "
            f"{self.settings.upload_retention_days} days after their last use; upload the "
            "image again with an imageUpload task, or send it inline as a data URI.",
            parameter=parameter,
        )

    def read(self, image_uuid: str, *, parameter: str = "imageUUID") -> bytes:
        return self.path(image_uuid, parameter=parameter).read_bytes()

    def purge_unused(self) -> int:
        """Delete uploads not used for ``upload_retention_days``; return how many."""
        cutoff = self.clock() - self.settings.upload_retention_days * 86400
        purged = 0
        for path in self.root.glob("*.*") if self.root.is_dir() else ():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    purged += 1
            except FileNotFoundError:  # purged concurrently
                continue
        return purged


def content_type_of(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
