"""Packs: a model as a directory to carry to an air-gapped machine on removable media.

A pack holds the two GGUF files and ``edgecap-pack.json``, which names the model and gives
each file's size and sha256, the licence and where the files came from. The JSON is written
last, so a directory without it is an unfinished copy. Importing checks every size and digest
before anything is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgecap import __version__
from edgecap.errors import ModelError
from edgecap.fsutil import partial_path, publish, write_json_atomic
from edgecap.registry.catalog import ROLES, SHA256_PATTERN, Licence, Role
from edgecap.registry.digests import copy_hashed
from edgecap.registry.store import InstalledModel

PACK_FILE = "edgecap-pack.json"
PACK_VERSION = 1
# A file name inside a pack: no directories, nothing hidden.
_FILE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$"


class PackFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_FILE_NAME, max_length=255)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)


class PackManifest(BaseModel):
    """The contents of ``edgecap-pack.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["edgecap-pack"] = "edgecap-pack"
    version: int
    id: str
    variant: str | None = None
    random_weights: bool = False
    licence: Licence
    source: str  # where the exporting machine got the files
    created_by: str
    text: PackFile
    mmproj: PackFile

    @model_validator(mode="after")
    def _two_different_files(self) -> PackManifest:
        if self.text.name == self.mmproj.name:
            raise ValueError("the text model and the projector must be two different files")
        return self

    def file(self, role: Role) -> PackFile:
        return self.text if role == "text" else self.mmproj


def read_pack(directory: Path) -> PackManifest:
    """The pack's manifest, checked for form and version (file contents are checked on import)."""
    path = directory / PACK_FILE
    if not directory.is_dir():
        raise ModelError(f"{directory} is not a directory; pass the pack directory to import")
    if not path.is_file():
        raise ModelError(
            f"{directory} is not an edgecap pack (no {PACK_FILE}): make one on a connected "
            "machine with `edgecap models export NAME DIR`, or if the copy was interrupted, "
            "copy the whole directory again"
        )
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is unreadable ({exc}); copy the pack again") from exc
    if isinstance(data, dict) and data.get("version", PACK_VERSION) != PACK_VERSION:
        raise ModelError(
            f"{path} is pack version {data.get('version')}, this edgecap reads version "
            f"{PACK_VERSION}: export it again with this edgecap version, or upgrade edgecap"
        )
    try:
        return PackManifest.model_validate(data)
    except ValidationError as exc:
        raise ModelError(f"{path} is not a valid edgecap pack manifest: {exc}") from exc


def check_pack_files(directory: Path, pack: PackManifest) -> None:
    """Every file the pack names is present with the stated size (digests come during copy)."""
    for role in ROLES:
        entry = pack.file(role)
        path = directory / entry.name
        if not path.is_file():
            raise ModelError(
                f"the pack is incomplete: {path} is missing; copy the whole pack directory again"
            )
        size = path.stat().st_size
        if size != entry.size:
            raise ModelError(
                f"{path} is {size} bytes but the pack says {entry.size}: the copy is truncated "
                "or altered; copy the pack again"
            )


def write_pack(
    record: InstalledModel, files: dict[Role, Path], dest: Path, *, progress: bool
) -> PackManifest:
    """Copy a model's files into the empty directory ``dest`` and describe them in the manifest.

    Each file is hashed as it is copied and must still match the store's record, so a file
    that went bad in the store is not carried further.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ModelError(f"{dest} is not an empty directory; choose a new directory for the pack")
    if record.text.name == record.mmproj.name:
        raise ModelError(
            f"{record.id}'s text model and projector are both named {record.text.name}; a pack "
            "holds them side by side: rename one and register the model again"
        )
    dest.mkdir(parents=True, exist_ok=True)
    entries: dict[Role, PackFile] = {}
    for role in ROLES:
        src, installed = files[role], record.file(role)
        final = dest / installed.name
        tmp = partial_path(final)
        actual = copy_hashed(src, tmp, progress=progress)
        if actual != installed.sha256:
            tmp.unlink()
            raise ModelError(
                f"{src} no longer matches its recorded sha256 ({installed.sha256}, now "
                f"{actual}); nothing was exported. Run `edgecap models verify {record.id}` "
                "and reinstall the model"
            )
        publish(tmp, final)
        entries[role] = PackFile(name=installed.name, size=installed.size, sha256=actual)
    pack = PackManifest(
        version=PACK_VERSION,
        id=record.id,
        variant=record.variant,
        random_weights=record.random_weights,
        licence=record.licence,
        source=f"{record.source} {record.origin}",
        created_by=f"edgecap {__version__}",
        text=entries["text"],
        mmproj=entries["mmproj"],
    )
    write_json_atomic(dest / PACK_FILE, pack.model_dump(mode="json"))
    return pack
