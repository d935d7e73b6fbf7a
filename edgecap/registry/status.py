"""What the registry reports: a model's status, a verification report, a removal."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edgecap.errors import ModelError
from edgecap.registry.catalog import KnownModel, Role
from edgecap.registry.store import DigestSource, InstalledModel, Source


@dataclass(frozen=True)
class ModelStatus:
    """One line of ``edgecap models list``: a known or installed model and its state."""

    id: str
    title: str
    aliases: tuple[str, ...]
    licence: str
    pullable: bool
    is_default: bool  # what resolve(None) returns now
    installed: bool
    source: Source | None = None
    variant: str | None = None
    size: int | None = None  # bytes on disk, when installed
    trust: DigestSource | None = None  # the weakest digest source of its files
    verified_at: datetime | None = None
    random_weights: bool = False
    stands_in_for: str | None = None  # this local conversion answers for that catalog model
    served_by: str | None = None  # this catalog model is answered by that stand-in

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aliases"] = list(self.aliases)
        out["verified_at"] = self.verified_at.isoformat() if self.verified_at else None
        return out


def make_status(
    known: KnownModel | None,
    record: InstalledModel | None,
    *,
    is_default: bool,
    served_by: str | None = None,
) -> ModelStatus:
    """The status of a known model (``record`` None: not installed, maybe ``served_by`` a
    stand-in) or an installed one."""
    if record is None:
        assert known is not None, "a status needs a known model or an installed one"
        return ModelStatus(
            id=known.id,
            title=known.title,
            aliases=known.aliases,
            licence=known.licence.name,
            pullable=known.pullable,
            is_default=is_default,
            installed=False,
            random_weights=known.random_weights,
            served_by=served_by,
        )
    return ModelStatus(
        id=record.id,
        title=known.title if known is not None else record.id,
        aliases=known.aliases if known is not None else (),
        licence=record.licence.name,
        pullable=known is not None and known.pullable,
        is_default=is_default,
        installed=True,
        source=record.source,
        variant=record.variant,
        size=record.size,
        trust=record.trust,
        verified_at=record.verified_at,
        random_weights=record.random_weights,
        stands_in_for=record.stands_in_for,
    )


@dataclass(frozen=True)
class FileCheck:
    """One re-hashed file of ``verify``."""

    role: Role
    path: Path
    expected_sha256: str
    actual_sha256: str | None  # None: the file is missing
    digest_source: DigestSource  # where the expected digest comes from

    @property
    def ok(self) -> bool:
        return self.actual_sha256 == self.expected_sha256


@dataclass(frozen=True)
class VerifyReport:
    id: str
    files: tuple[FileCheck, ...]
    fix: str  # what to run when a check failed

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.files)

    def error(self) -> ModelError | None:
        """The failure as an error naming each bad file, both digests and the fix; None if ok."""
        problems = [
            f"{c.path} is missing"
            if c.actual_sha256 is None
            else f"sha256 mismatch for {c.path}: expected {c.expected_sha256}, "
            f"got {c.actual_sha256}"
            for c in self.files
            if not c.ok
        ]
        if not problems:
            return None
        return ModelError(f"{self.id}: {'; '.join(problems)}. Fix: {self.fix}", parameter="model")


@dataclass(frozen=True)
class Removed:
    id: str
    kept_files: tuple[Path, ...]  # files of a local registration, left where they are
