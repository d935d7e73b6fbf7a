"""Finding the images of a run: command-line specs -> :class:`ImageItem` s."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgecap.batch.manifest import MANIFEST_SUFFIXES, read_manifest
from edgecap.errors import InvalidParameter, MissingInputImage

# Files a folder search picks up (case-insensitive). A file named on the command line is
# captioned whatever its name; folders and globs also hold sidecars and other non-images.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | {".heic", ".heif", ".avif"}
)
SIDECAR_SUFFIX = ".txt"
URL_PATTERN = re.compile(r"^https?://", re.IGNORECASE)
GLOB_CHARS = re.compile(r"[*?[]")


@dataclass(frozen=True)
class ImageItem:
    """One image of a run: a file, an http(s) URL, or ``"-"`` (stdin)."""

    source: str | Path

    @property
    def name(self) -> str:
        """How messages and results name the image: the path or URL as given."""
        return str(self.source)

    @property
    def path(self) -> Path | None:
        return self.source if isinstance(self.source, Path) else None

    @property
    def sidecar(self) -> Path | None:
        """``photo.jpg`` -> ``photo.txt`` next to it; None for URLs and stdin."""
        return self.path.with_suffix(SIDECAR_SUFFIX) if self.path is not None else None


def find_images(specs: Sequence[str]) -> list[ImageItem]:
    """The images that command-line specs name, in order, each once.

    A spec is ``-`` (stdin), an http(s) URL, a file, a folder (searched recursively for
    :data:`IMAGE_SUFFIXES`, hidden entries skipped, sorted), a glob (``**`` recurses) or a
    manifest (a ``.jsonl``, ``.csv`` or ``.parquet`` file listing images,
    :mod:`edgecap.batch.manifest`). Raises
    :class:`InvalidParameter` for a path that does not exist or a folder or glob with no image,
    so that a typo fails before a model is loaded.
    """
    items: list[ImageItem] = []
    seen: set[str] = set()
    for spec in specs:
        for item in _expand(spec):
            identity = str(item.path.resolve()) if item.path is not None else item.name
            if identity not in seen:
                seen.add(identity)
                items.append(item)
    if not items:
        raise MissingInputImage("No image given: name image files, folders, globs or URLs.")
    return items


def _expand(spec: str) -> list[ImageItem]:
    if spec == "-" or URL_PATTERN.match(spec):
        return [ImageItem(spec)]
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return [ImageItem(source) for source in read_manifest(path)]
    if path.is_dir():
        found = _images_under(path)
        if not found:
            raise InvalidParameter(f"No images under '{spec}' ({_suffix_list()}, recursively).")
        return found
    if path.exists():
        return [ImageItem(path)]
    if GLOB_CHARS.search(spec):
        found = []
        for match in sorted(glob.glob(os.path.expanduser(spec), recursive=True)):
            if os.path.isdir(match):
                found += _images_under(Path(match))
            elif _is_image_name(Path(match)):
                found.append(ImageItem(Path(match)))
        if not found:
            raise InvalidParameter(f"No images match '{spec}' ({_suffix_list()}).")
        return found
    raise InvalidParameter(f"No such file or directory: '{spec}'. Check the path.")


def _images_under(folder: Path) -> list[ImageItem]:
    found: list[ImageItem] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            ImageItem(Path(root) / name)
            for name in sorted(files)
            if not name.startswith(".") and _is_image_name(Path(name))
        ]
    return found


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _suffix_list() -> str:
    return "looked for " + ", ".join(sorted(s[1:] for s in IMAGE_SUFFIXES)) + " files"
