"""The catalog: the models edgecap knows by name, shipped as ``edgecap/data/manifest.json``.

A known model has an id, aliases (Runware AIR ids, slugs), a licence, and — when it can be
pulled — a Hugging Face repository, its files with size and sha256 where they are known, and
named variants (a text file paired with a projector file). ``null`` digests are filled in at
first use and reported as such (see ``edgecap.registry.store``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgecap.errors import ModelError

SHA256_PATTERN = r"^[0-9a-f]{64}$"
ROLES: tuple[Literal["text", "mmproj"], ...] = ("text", "mmproj")
Role = Literal["text", "mmproj"]


def normalize_name(name: str) -> str:
    """Model names and aliases are matched case-insensitively, ignoring surrounding spaces."""
    return name.strip().lower()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Licence(_Strict):
    name: str
    url: str | None = None


class CatalogFile(_Strict):
    """What the catalog knows about one published file; ``None`` = not known yet."""

    size: int | None = Field(None, ge=0)
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)


class Variant(_Strict):
    """A text model file and the projector file it is used with."""

    text: str
    mmproj: str

    def file(self, role: Role) -> str:
        return self.text if role == "text" else self.mmproj

    @property
    def mmproj_type(self) -> str:
        """The projector's tensor type, from its published name (``mmproj-…-f16.gguf``)."""
        return self.mmproj.removesuffix(".gguf").rsplit("-", 1)[-1].lower()


class KnownModel(_Strict):
    id: str
    title: str
    aliases: tuple[str, ...] = ()
    licence: Licence
    repo: str | None = None  # Hugging Face repository; None = not pullable (built locally)
    revision: str | None = None
    default_variant: str | None = None
    random_weights: bool = False
    files: dict[str, CatalogFile] = Field(default_factory=dict)
    variants: dict[str, Variant] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _variants_name_known_files(self) -> KnownModel:
        for name, variant in self.variants.items():
            for role in ROLES:
                if variant.file(role) not in self.files:
                    raise ValueError(f"variant {name!r} names unknown file {variant.file(role)!r}")
        if self.repo is not None and self.default_variant not in self.variants:
            raise ValueError(f"{self.id}: default_variant must name one of its variants")
        return self

    @property
    def pullable(self) -> bool:
        return self.repo is not None

    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def variant(self, name: str | None) -> tuple[str, Variant]:
        """The named variant (or the default one), as ``(name, variant)``."""
        key = normalize_name(name) if name else self.default_variant
        if key is None or key not in self.variants:
            choices = ", ".join(self.variants) or "none"
            raise ModelError(
                f"{self.id} has no variant {name!r}; choose one of: {choices} "
                f"(e.g. `edgecap models pull {self.id} --variant {self.default_variant}`)",
                parameter="variant",
            )
        return key, self.variants[key]

    def variant_for(self, mmproj_type: str) -> tuple[str, str | None]:
        """The variant to pull where none was asked for: the default one's text file with a
        projector of ``mmproj_type`` if one is published, else the default, with a note why."""
        default_name, default = self.variant(None)
        if default.mmproj_type == mmproj_type:
            return default_name, None
        for name, candidate in self.variants.items():
            if candidate.text == default.text and candidate.mmproj_type == mmproj_type:
                return name, None
        note = (
            f"a {mmproj_type} projector suits this CPU, but {self.id} publishes none; pulling "
            f"the {default.mmproj_type} one (`tools/convert.py --mmproj-type {mmproj_type}` "
            "makes one from the Hugging Face checkpoint)"
        )
        return default_name, note


class Catalog(_Strict):
    format: Literal[1]
    default: str
    models: tuple[KnownModel, ...]

    @model_validator(mode="after")
    def _names_are_unique(self) -> Catalog:
        seen: set[str] = set()
        for model in self.models:
            for name in model.names():
                key = normalize_name(name)
                if key in seen:
                    raise ValueError(f"model name {name!r} is used twice")
                seen.add(key)
        if self.default not in {m.id for m in self.models}:
            raise ValueError(f"default model {self.default!r} is not in the catalog")
        return self

    def find(self, name: str) -> KnownModel | None:
        """The known model with this id or alias, or None."""
        key = normalize_name(name)
        for model in self.models:
            if key in (normalize_name(n) for n in model.names()):
                return model
        return None

    def get(self, model_id: str) -> KnownModel:
        model = self.find(model_id)
        if model is None:
            raise KeyError(model_id)
        return model


def load_catalog(path: Path | None = None) -> Catalog:
    """Read a catalog file; by default the one shipped inside the package."""
    try:
        if path is None:
            text = resources.files("edgecap").joinpath("data", "manifest.json").read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        return Catalog.model_validate(json.loads(text))
    except (OSError, ValueError, ValidationError) as exc:
        where = path or "edgecap/data/manifest.json"
        raise ModelError(
            f"the model catalog {where} is unreadable ({exc}); reinstall edgecap"
        ) from exc
