"""The model store: ``<models_dir>/<id>/`` holding the GGUF files and a ``manifest.json`` record.

A record says where each file is, its size and sha256, and where that digest came from:

- ``manifest``: checked against the digest shipped in edgecap's catalog;
- ``hub``: checked against the sha256 the Hugging Face Hub publishes for the file (its LFS ETag);
- ``tofu``: "trust on first use" — nothing published to check against, so the digest of the
  file as first installed is recorded, and later checks compare against that.

Models registered by path (``source = "local"``) keep their files where they are; their record
holds absolute paths.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecap.errors import ModelError
from edgecap.fsutil import write_json_atomic
from edgecap.registry.catalog import ROLES, SHA256_PATTERN, Licence, Role

RECORD_NAME = "manifest.json"
DOWNLOADS_DIR = ".downloads"  # resumable downloads in progress, on the store's filesystem

DigestSource = Literal["manifest", "hub", "tofu"]
Source = Literal["pull", "import", "local"]
# The weakest digest source of a model's files describes the model.
TRUST_ORDER: tuple[DigestSource, ...] = ("tofu", "hub", "manifest")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class InstalledFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str  # relative to the model's directory, or absolute for local registrations
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)
    digest_source: DigestSource

    @property
    def name(self) -> str:
        return Path(self.path).name


class InstalledModel(BaseModel):
    """The record of one installed model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    id: str
    source: Source
    origin: str  # where the files came from: a Hub URL at a commit, a pack directory, a path
    variant: str | None = None
    licence: Licence
    random_weights: bool = False
    installed_at: datetime
    verified_at: datetime | None = None
    text: InstalledFile
    mmproj: InstalledFile

    def file(self, role: Role) -> InstalledFile:
        return self.text if role == "text" else self.mmproj

    @property
    def size(self) -> int:
        return self.text.size + self.mmproj.size

    @property
    def trust(self) -> DigestSource:
        """The weakest digest source among the files."""
        return min((self.file(r).digest_source for r in ROLES), key=TRUST_ORDER.index)


class Store:
    """Reads and writes records under ``models_dir``."""

    def __init__(self, models_dir: Path) -> None:
        self.root = models_dir

    def model_dir(self, model_id: str) -> Path:
        return self.root / model_id

    def downloads_dir(self, model_id: str) -> Path:
        return self.root / DOWNLOADS_DIR / model_id

    def path_of(self, record: InstalledModel, role: Role) -> Path:
        # An absolute path (local registration) wins over the directory in the join.
        return self.model_dir(record.id) / record.file(role).path

    def load(self, model_id: str) -> InstalledModel | None:
        path = self.model_dir(model_id) / RECORD_NAME
        try:
            return InstalledModel.model_validate(json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ValidationError) as exc:
            raise ModelError(
                f"the store record {path} is unreadable ({exc}); remove the model with "
                f"`edgecap models rm {model_id} --yes` and install it again"
            ) from exc

    def all(self) -> list[InstalledModel]:
        """Every installed model, by id."""
        if not self.root.is_dir():
            return []
        ids = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and (p / RECORD_NAME).is_file()
        )
        return [record for i in ids if (record := self.load(i)) is not None]

    def save(self, record: InstalledModel) -> None:
        directory = self.model_dir(record.id)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / RECORD_NAME, record.model_dump(mode="json"))

    def prune(self, record: InstalledModel) -> None:
        """Delete files in the model's directory that its record no longer names."""
        directory = self.model_dir(record.id)
        # A file path is a name inside the directory, or absolute for a model registered by
        # path — which may well point into this very directory.
        keep = {(directory / RECORD_NAME).resolve()}
        keep |= {(directory / record.file(r).path).resolve() for r in ROLES}
        for path in directory.iterdir():
            if path.is_file() and path.resolve() not in keep:
                path.unlink()

    def delete(self, model_id: str) -> None:
        """Remove a model's directory: its record and the files the store owns."""
        shutil.rmtree(self.model_dir(model_id), ignore_errors=True)
        shutil.rmtree(self.downloads_dir(model_id), ignore_errors=True)


def reinstall_hint(record: InstalledModel) -> str:
    """The command that puts a broken install right, by where the model came from."""
    if record.source == "pull":
        return (
            f"remove it with `edgecap models rm {record.id} --yes` and run "
            f"`edgecap models pull {record.id}` again"
        )
    if record.source == "import":
        return "copy the pack again and re-run `edgecap models import PATH`"
    if record.random_weights:
        return "rebuild it with `make demo` (or `edgecap demo`)"
    return (
        f"register it again with `edgecap models register {record.id} --text TEXT --mmproj MMPROJ`"
    )
