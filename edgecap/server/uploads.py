"""Images sent with ``imageUpload``: stored under ``settings.uploads_dir``, captioned by UUID.

An upload is decoded once to check that it is an image we can read, and stored re-encoded
(:func:`reencoded`; downscaled to :data:`MAX_SIDE` as Runware does): bytes appended after the
image, metadata and polyglot payloads are never stored or served (with ``nosniff``). The same
picture sent again re-encodes to the same bytes, so the engine's image cache still recognises
it. Each key has an upload quota, and so has the server (429 when used up); a full disk is
``insufficientStorage`` (507) and leaves no temporary file. Each file's modification time
records its last use; files unused for ``settings.upload_retention_days`` are deleted by
:meth:`UploadStore.purge_unused`.
"""

from __future__ import annotations

import errno
import io
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from edgecap.config import Settings
from edgecap.errors import EdgecapError, InsufficientStorage, MediaNotFound, RateLimited
from edgecap.fsutil import write_bytes_atomic
from edgecap.inputs import images
from edgecap.inputs.base64text import decode_base64

MAX_SIDE = 2048
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 1  # fast: uploads are re-encoded on the request path
ANONYMOUS = "_"  # the owner tag of uploads on a server without keys
QUOTA_RETRY_AFTER_S = 3600  # unused uploads are purged hourly
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
    """Uploaded images as files named ``<uuid>.<owner>.<ext>``; their mtime is their last use.

    ``owner`` is the uploading key's hash (``_`` without keys): only that key can see the file.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.root = settings.uploads_dir
        self.clock = clock
        self._lock = threading.Lock()  # quota check and write, one upload at a time

    def save(self, source: str, owner: str | None = None) -> str:
        """Read, check, re-encode and store an image (data URI, base64 or URL); its new UUID.

        Raises InvalidInputImage (not an image, too large), DownloadFailed (URL),
        RateLimited (a quota is used up) or InsufficientStorage (the disk is full).
        """
        try:
            readable = wire_image(source, self.settings)
            encoded = images.read_source(readable, self.settings)
            with images.decode_slot(self.settings, images.header_pixels(encoded)):
                picture, source_format = images.decode_image(encoded, self.settings)
                data, ext = reencoded(picture, source_format)
        except EdgecapError as exc:
            exc.parameter = exc.parameter or "image"
            raise
        image_uuid = str(uuid.uuid4())
        with self._lock:
            self._check_quota(len(data), _tag(owner))
            self._write(self.root / f"{image_uuid}.{_tag(owner)}.{ext}", data)
        return image_uuid

    def _write(self, path: Path, data: bytes) -> None:
        """Write atomically (fsutil removes the partial file on failure); a full disk is
        InsufficientStorage."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(
                    "The server's disk is full: the image could not be stored. Try again "
                    "later, or send the image inline with the caption task.",
                    parameter="image",
                ) from None
            raise

    def _check_quota(self, size: int, tag: str) -> None:
        mine, everyone = self.usage(tag)
        for used, quota, whose in (
            (mine, self.settings.upload_quota_bytes_per_key, "this key's"),
            (everyone, self.settings.upload_quota_bytes_total, "the server's"),
        ):
            if used + size > quota:
                raise RateLimited(
                    f"The image would exceed {whose} upload quota ({used:,} of {quota:,} bytes "
                    f"stored). Uploads unused for {self.settings.upload_retention_days} days are "
                    "deleted; send images inline meanwhile, or ask the operator to raise "
                    "upload_quota_bytes_per_key / upload_quota_bytes_total.",
                    parameter="image",
                    retry_after=QUOTA_RETRY_AFTER_S,
                )

    def usage(self, tag: str) -> tuple[int, int]:
        """Bytes stored by the owner ``tag``, and by everyone."""
        mine = everyone = 0
        if not self.root.is_dir():
            return 0, 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                size = entry.stat().st_size
                everyone += size
                mine += size if _owner_tag(entry.name) == tag else 0
        return mine, everyone

    def path(
        self, image_uuid: str, *, parameter: str = "imageUUID", owner: str | None = None
    ) -> Path:
        """The stored file of an upload, marked as used now. Raises MediaNotFound, also for
        another key's upload."""
        if is_media_uuid(image_uuid):
            for path in self.root.glob(f"{image_uuid.lower()}.*"):
                if _owner_tag(path.name) not in (_tag(owner), None):
                    continue
                now = self.clock()
                os.utime(path, (now, now))
                return path
        raise MediaNotFound(
            f"No uploaded image has the UUID {image_uuid[:80]!r}. Uploads are kept for "
            f"{self.settings.upload_retention_days} days after their last use; upload the "
            "image again with an imageUpload task, or send it inline as a data URI.",
            parameter=parameter,
        )

    def read(
        self, image_uuid: str, *, parameter: str = "imageUUID", owner: str | None = None
    ) -> bytes:
        return self.path(image_uuid, parameter=parameter, owner=owner).read_bytes()

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


def reencoded(picture: Image.Image, source_format: str) -> tuple[bytes, str]:
    """The decoded picture written afresh (JPEG for JPEG sources, PNG otherwise), downscaled
    to :data:`MAX_SIDE`: nothing the client appended or embedded (trailing bytes, metadata,
    polyglot payloads) is stored or served."""
    if max(picture.size) > MAX_SIDE:
        picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if source_format in ("JPEG", "MPO"):
        picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue(), "jpg"
    picture.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue(), "png"


def _tag(owner: str | None) -> str:
    return owner or ANONYMOUS


def _owner_tag(name: str) -> str | None:
    """The owner part of ``<uuid>.<owner>.<ext>``; None for files stored before owners."""
    parts = name.split(".")
    return parts[1] if len(parts) == 3 else None


def content_type_of(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
