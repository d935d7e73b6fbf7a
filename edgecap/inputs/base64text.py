"""The one base64 rule for images, used by the CLI (:mod:`edgecap.inputs.images`) and the
server (:mod:`edgecap.server.uploads`) alike (docs/api.md, "Images").

Accepted: the standard (``+/``) or the URL-safe (``-_``) alphabet — one of them, not a mix —
with whitespace anywhere (line breaks of wrapped base64) and the ``=`` padding optional.
Refused with ``invalidInputImage``: any other character, a mixed alphabet, a length no base64
text can have, and text that would decode to more than ``max_image_bytes`` (checked before
decoding).
"""

from __future__ import annotations

import base64
import binascii
import re

from edgecap.errors import InvalidInputImage

BASE64_TEXT = re.compile(r"(?:[A-Za-z0-9+/]+|[A-Za-z0-9_-]+)={0,2}")
URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
ACCEPTED_SOURCES = "a file path, an http(s) URL, a data URI or base64-encoded image bytes"


def decode_base64(text: str, limit: int, described: str, *, fix: str = "") -> bytes:
    """The bytes ``text`` encodes under the rule above; ``described`` names the text in errors
    ("the data URI"), ``fix`` says what to send instead (default: the sources the CLI takes)."""
    fix = fix or f"Send {ACCEPTED_SOURCES}."
    compact = "".join(text.split())
    decoded_size = len(compact) * 3 // 4
    if decoded_size > limit:
        raise too_many_bytes(described, decoded_size, limit)
    if not BASE64_TEXT.fullmatch(compact):
        raise InvalidInputImage(f"{sentence_start(described)} is not valid base64. {fix}")
    unpadded = compact.rstrip("=")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    try:
        return base64.b64decode(padded.translate(URLSAFE_TO_STANDARD), validate=True)
    except binascii.Error as exc:
        raise InvalidInputImage(
            f"{sentence_start(described)} is not valid base64 ({exc}). {fix}"
        ) from exc


def too_many_bytes(described: str, size: int | None, limit: int) -> InvalidInputImage:
    """The error for an image over ``max_image_bytes`` (``size`` None: not known)."""
    shown = f"{size:,} bytes; " if size is not None else ""
    return InvalidInputImage(
        f"{sentence_start(described)} is too large ({shown}the limit is {limit:,} bytes, "
        "max_image_bytes / EDGECAP_MAX_IMAGE_BYTES). Send a smaller or more compressed image."
    )


def sentence_start(text: str) -> str:
    """Upper-case the first letter only (``str.capitalize`` would lower-case a file name)."""
    return text[:1].upper() + text[1:]
