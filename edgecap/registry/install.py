"""Installing a model into the store: from the Hub, from a pack, or by path.

Every way in ends the same: the files' digests are checked (or, with nothing published to
check against, recorded — "tofu"), the checked files are renamed into ``<models_dir>/<id>/``,
and only then is the model's record written. A file that fails its check is deleted, never
installed.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgecap.engine.hardware import recommend
from edgecap.errors import InvalidParameter, ModelError
from edgecap.fsutil import partial_path, publish
from edgecap.registry import hub
from edgecap.registry.catalog import ROLES, CatalogFile, KnownModel, Licence, Role, normalize_name
from edgecap.registry.digests import check_digest, copy_hashed, sha256_file
from edgecap.registry.packs import PackManifest, check_pack_files
from edgecap.registry.store import DigestSource, InstalledFile, InstalledModel, Store, utc_now

logger = logging.getLogger(__name__)

LOCAL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
UNKNOWN_LICENCE = Licence(name="unknown (registered local files)")


def local_name(name: str) -> str:
    """A name for a model outside the catalog, checked to be a safe directory name."""
    key = normalize_name(name)
    if not LOCAL_NAME.match(key):
        raise InvalidParameter(
            f"{name!r} is not a usable model name: use 1-64 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit",
            parameter="name",
        )
    return key


def install(store: Store, record: InstalledModel, staged: dict[Role, Path]) -> None:
    """Rename checked files into the model's directory, then write its record."""
    directory = store.model_dir(record.id)
    directory.mkdir(parents=True, exist_ok=True)
    for role, tmp in staged.items():
        publish(tmp, directory / record.file(role).path)
    store.save(record)
    store.prune(record)


# -- from the Hub ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fetched:
    file: InstalledFile
    staged: Path | None = None  # downloaded, waiting to be renamed into the store
    url: str | None = None


def pull_model(
    store: Store,
    known: KnownModel,
    *,
    variant: str | None,
    endpoint: str | None,
    progress: bool,
) -> InstalledModel:
    """Download a known model's variant, keeping files already installed, and install it."""
    current = store.load(known.id)
    if variant is None and current is not None and current.variant in known.variants:
        variant = current.variant  # pulling again repairs the installed variant
    if variant is None:
        variant, note = known.variant_for(recommend().mmproj_type)
        if note:
            logger.warning(note)
    variant_name, chosen = known.variant(variant)
    fetched = {
        role: _fetch(store, known, chosen.file(role), current, endpoint, progress) for role in ROLES
    }
    urls = [f.url for f in fetched.values() if f.url]
    record = InstalledModel(
        id=known.id,
        source="pull",
        origin=" ".join(urls) if urls else current.origin if current else "",
        variant=variant_name,
        licence=known.licence,
        random_weights=known.random_weights,
        installed_at=utc_now(),
        text=fetched["text"].file,
        mmproj=fetched["mmproj"].file,
    )
    install(store, record, {r: f.staged for r, f in fetched.items() if f.staged is not None})
    shutil.rmtree(store.downloads_dir(known.id), ignore_errors=True)
    return record


def _fetch(
    store: Store,
    known: KnownModel,
    filename: str,
    current: InstalledModel | None,
    endpoint: str | None,
    progress: bool,
) -> _Fetched:
    """One file of a pull: kept from the current install, or downloaded and checked."""
    kept = _reusable(store, current, filename, known.files[filename])
    if kept is not None:
        return _Fetched(kept)
    assert known.repo is not None and known.revision is not None, "only pullable models"
    fix = (
        f"run `edgecap models pull {known.id}` again (downloads resume), or on an "
        "offline machine `edgecap models import PATH`"
    )
    got = hub.download(
        known.repo,
        filename,
        revision=known.revision,
        dest_dir=store.downloads_dir(known.id),
        endpoint=endpoint,
        progress=progress,
        fix=fix,
    )
    checked = _check_download(got, known.files[filename], fix, progress)
    return _Fetched(checked, got.path, got.url)


def _reusable(
    store: Store, current: InstalledModel | None, filename: str, published: CatalogFile
) -> InstalledFile | None:
    """An installed file to keep instead of downloading it again, if there is one."""
    if current is None or current.source == "local":
        return None
    for role in ROLES:
        installed = current.file(role)
        path = store.path_of(current, role)
        if (
            installed.name == filename
            and path.is_file()
            and path.stat().st_size == installed.size
            and published.sha256 in (None, installed.sha256)
        ):
            return installed
    return None


def _check_download(
    got: hub.Downloaded, published: CatalogFile, fix: str, progress: bool
) -> InstalledFile:
    """Hash a downloaded file and hold it to the catalog's and the Hub's digests and size."""
    actual = sha256_file(got.path, progress=progress)
    size = got.path.stat().st_size
    candidates: tuple[tuple[str | None, DigestSource], ...] = (
        (published.sha256, "manifest"),
        (got.hub_sha256, "hub"),
    )
    expected = [(digest, source) for digest, source in candidates if digest is not None]
    try:
        if published.size is not None and size != published.size:
            raise ModelError(
                f"{got.url} is {size} bytes, the catalog says {published.size}; it was not "
                f"installed: {fix}"
            )
        for digest, _ in expected:
            check_digest(got.path, digest, actual, fix=fix)
    except ModelError:
        got.path.unlink(missing_ok=True)  # a bad file must not be resumed or installed
        raise
    source = expected[0][1] if expected else "tofu"
    return InstalledFile(path=got.path.name, size=size, sha256=actual, digest_source=source)


# -- from a pack -----------------------------------------------------------------------------


def import_pack_dir(
    store: Store,
    path: Path,
    pack: PackManifest,
    model_id: str,
    known: KnownModel | None,
    *,
    progress: bool,
) -> InstalledModel:
    """Install a pack's files after checking sizes, then digests (against the catalog too)."""
    check_pack_files(path, pack)
    files: dict[Role, InstalledFile] = {}
    for role in ROLES:
        entry = pack.file(role)
        published = known.files.get(entry.name) if known is not None else None
        if published is not None and published.sha256 not in (None, entry.sha256):
            raise ModelError(
                f"the pack lists sha256 {entry.sha256} for {entry.name}, but edgecap's "
                f"catalog says {published.sha256}: these are not the published files of "
                f"{model_id}; nothing was installed"
            )
        source: DigestSource = "manifest" if published and published.sha256 else "tofu"
        files[role] = InstalledFile(
            path=entry.name, size=entry.size, sha256=entry.sha256, digest_source=source
        )
    directory = store.model_dir(model_id)
    directory.mkdir(parents=True, exist_ok=True)
    staged = _stage_copies(path, pack, directory, progress)
    record = InstalledModel(
        id=model_id,
        source="import",
        origin=f"pack {path.resolve()} ({pack.source})",
        variant=pack.variant,
        licence=known.licence if known is not None else pack.licence,
        random_weights=pack.random_weights or (known is not None and known.random_weights),
        installed_at=utc_now(),
        text=files["text"],
        mmproj=files["mmproj"],
    )
    install(store, record, staged)
    return record


def _stage_copies(
    src_dir: Path, pack: PackManifest, dest_dir: Path, progress: bool
) -> dict[Role, Path]:
    """Copy both files to temporary names in ``dest_dir``, each checked against the pack."""
    fix = "copy the pack again and re-run `edgecap models import PATH`"
    staged: dict[Role, Path] = {}
    try:
        for role in ROLES:
            entry = pack.file(role)
            src = src_dir / entry.name
            staged[role] = partial_path(dest_dir / entry.name)
            actual = copy_hashed(src, staged[role], progress=progress)
            check_digest(src, entry.sha256, actual, fix=fix)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    return staged


# -- by path ---------------------------------------------------------------------------------


def register_files(
    store: Store,
    model_id: str,
    known: KnownModel | None,
    text: Path,
    mmproj: Path,
    *,
    random_weights: bool,
    progress: bool,
) -> InstalledModel:
    """Record two GGUF files where they are, with their digests as of now."""
    paths: dict[Role, Path] = {
        "text": text.expanduser().resolve(),
        "mmproj": mmproj.expanduser().resolve(),
    }
    for role, path in paths.items():
        if not path.is_file():
            raise ModelError(f"the {role} file {path} does not exist", parameter=role)
    if paths["text"] == paths["mmproj"]:
        raise InvalidParameter(
            "--text and --mmproj must be two different files (the text model and its "
            "vision projector)",
            parameter="mmproj",
        )
    files = {
        role: InstalledFile(
            path=str(path),
            size=path.stat().st_size,
            sha256=sha256_file(path, progress=progress),
            digest_source="tofu",
        )
        for role, path in paths.items()
    }
    record = InstalledModel(
        id=model_id,
        source="local",
        origin="registered by path",
        licence=known.licence if known is not None else UNKNOWN_LICENCE,
        random_weights=random_weights or (known is not None and known.random_weights),
        installed_at=utc_now(),
        text=files["text"],
        mmproj=files["mmproj"],
    )
    install(store, record, {})
    return record
