"""The registry: which models exist, which are installed, and which one a name means.

``Registry(settings)`` answers ``resolve(name)`` with the two files llama.cpp loads, and
installs models three ways — ``pull`` (Hugging Face or a mirror), ``import_pack`` (a directory
carried from another machine) and ``register_local`` (files left where they are). Every
installed file has a recorded sha256; ``verify`` re-hashes them.
"""

from __future__ import annotations

from pathlib import Path

from edgecap.config import Settings
from edgecap.errors import DownloadFailed, InvalidParameter, ModelError, ModelNotReady, UnknownModel
from edgecap.records import ModelFiles
from edgecap.registry import install, standins
from edgecap.registry.catalog import ROLES, Catalog, KnownModel, Role, load_catalog, normalize_name
from edgecap.registry.digests import sha256_file
from edgecap.registry.packs import PackManifest, read_pack, write_pack
from edgecap.registry.status import FileCheck, ModelStatus, Removed, VerifyReport, make_status
from edgecap.registry.store import InstalledFile, InstalledModel, Store, reinstall_hint, utc_now


class Registry:
    """Known models (the catalog) and installed ones (the store under ``settings.models_dir``)."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog if catalog is not None else load_catalog()
        self.store = Store(settings.models_dir)

    # -- which model a name means ------------------------------------------------------------

    def resolve(self, name: str | None = None) -> ModelFiles:
        """The files of an installed model, by id, alias, AIR id, slug or local name.

        ``None`` means ``settings.model`` if set, otherwise the default: the catalog's default
        model if installed, else another installed model with real weights, else the tiny
        demo model. The files must exist with their recorded sizes.
        """
        name = name or self.settings.model
        record = self._installed(name) if name else self._default_record()
        paths: dict[Role, Path] = {}
        for role in ROLES:
            paths[role] = path = self.store.path_of(record, role)
            if not path.is_file():
                raise ModelError(
                    f"{record.id}: its {role} file {path} is missing; {reinstall_hint(record)}",
                    parameter="model",
                )
            if path.stat().st_size != record.file(role).size:
                raise ModelError(
                    f"{record.id}: {path} changed size since it was installed; "
                    f"{reinstall_hint(record)}",
                    parameter="model",
                )
        return ModelFiles(record.id, paths["text"], paths["mmproj"], record.random_weights)

    def _identify(self, name: str) -> tuple[str, KnownModel | None]:
        """The model id a name means, and its catalog entry if it has one."""
        known = self.catalog.find(name)
        if known is not None:
            return known.id, known
        key = normalize_name(name)
        if install.LOCAL_NAME.match(key) and self.store.model_dir(key).is_dir():
            return key, None
        names = [m.id for m in self.catalog.models]
        names += [r.id for r in self.store.all() if r.id not in names]
        raise UnknownModel(
            f"unknown model {name!r}; known models: {', '.join(names)} "
            "(aliases and install state: `edgecap models list`)",
            parameter="model",
        )

    def _installed(self, name: str) -> InstalledModel:
        model_id, known = self._identify(name)
        record = self.store.load(model_id)
        if record is None and known is not None:
            record = standins.stand_in_for(self.store, known.id)
        if record is not None:
            return record
        if known is not None and not known.pullable:
            hint = f"{model_id} is not built yet: run `make demo` (or `edgecap demo`)"
        else:
            hint = (
                f"{model_id} is not installed: run `edgecap models pull {model_id}`, or on an "
                "offline machine `edgecap models import PATH` with a pack made by "
                "`edgecap models export`"
            )
        raise ModelNotReady(hint, parameter="model")

    def _default_record(self) -> InstalledModel:
        installed = self.store.all()
        if not installed:
            raise ModelNotReady(
                "no model is installed: run `edgecap models pull "
                f"{self.catalog.default}` (about 6 GB), `edgecap models import PATH` with a "
                "pack, or `make demo` for the tiny test model",
                parameter="model",
            )
        return min(installed, key=self._default_rank)

    def _default_rank(self, record: InstalledModel) -> tuple[bool, bool, int, str]:
        # Real weights before random ones; the catalog's default first; then catalog order;
        # then the other installed models by name.
        order = [m.id for m in self.catalog.models]
        answers_for = record.stands_in_for or record.id
        position = order.index(answers_for) if answers_for in order else len(order)
        return (record.random_weights, answers_for != self.catalog.default, position, record.id)

    # -- installing --------------------------------------------------------------------------

    def pull(
        self,
        name: str,
        *,
        variant: str | None = None,
        endpoint: str | None = None,
        progress: bool = True,
    ) -> InstalledModel:
        """Download a known model's files (resumable), check their digests, and install them.

        Digests are held to the catalog's when it has them, and to the sha256 the Hub publishes
        (LFS files); with neither, they are recorded on first use ("tofu"). Installed files of
        the same name and digest are kept. ``endpoint`` is the base URL of a Hub mirror.
        """
        model_id, known = self._identify(name)
        if known is None or not known.pullable:
            how = "`make demo` (or `edgecap demo`)" if known else "`edgecap models register`"
            raise ModelError(
                f"{model_id} is not downloadable, it is built or registered locally with {how}",
                parameter="model",
            )
        if self.settings.offline:
            raise DownloadFailed(
                f"edgecap is set to offline, so {model_id} cannot be downloaded: on a connected "
                f"machine run `edgecap models pull {model_id}` and `edgecap models export "
                f"{model_id} DIR`, carry DIR over, and run `edgecap models import DIR`"
            )
        record = install.pull_model(
            self.store, known, variant=variant, endpoint=endpoint, progress=progress
        )
        standins.retire(self.store, record.id)
        return record

    def import_pack(self, path: Path, *, progress: bool = True) -> InstalledModel:
        """Install a model from a pack directory, after checking every file's size and digest."""
        pack = read_pack(path)
        known = self.catalog.find(pack.id)
        model_id = known.id if known is not None else install.local_name(pack.id)
        record = install.import_pack_dir(self.store, path, pack, model_id, known, progress=progress)
        if known is not None:
            standins.retire(self.store, record.id)
        return record

    def stand_in(self, name: str) -> InstalledModel | None:
        """The local conversion standing in for the catalog model ``name`` means, if any
        (None also when ``name`` is not a catalog model)."""
        known = self.catalog.find(name)
        return standins.stand_in_for(self.store, known.id) if known is not None else None

    def register_local(
        self,
        name: str,
        text: Path,
        mmproj: Path,
        random_weights: bool = False,
        *,
        stands_in_for: str | None = None,
        progress: bool = False,
    ) -> InstalledModel:
        """Record two GGUF files under a name, by path (no copy), with their digests as of now.

        Names of downloadable catalog models are refused; the demo model's name is allowed.
        With ``stands_in_for`` (a catalog model's id or alias), the files answer for that
        model too, until its published files are installed (:mod:`edgecap.registry.standins`).
        """
        if stands_in_for is not None:
            return self._register_stand_in(name, text, mmproj, stands_in_for, progress=progress)
        known = self.catalog.find(name)
        if known is not None and known.pullable:
            raise InvalidParameter(
                f"{name!r} names {known.id}, a model edgecap downloads: register your files "
                f"under another name (e.g. `my-{known.id}`), or install the published files "
                "with `edgecap models pull` or `edgecap models import`",
                parameter="name",
            )
        model_id = known.id if known is not None else install.local_name(name)
        return install.register_files(
            self.store,
            model_id,
            known,
            text,
            mmproj,
            random_weights=random_weights,
            progress=progress,
        )

    def _register_stand_in(
        self, name: str, text: Path, mmproj: Path, target_name: str, *, progress: bool
    ) -> InstalledModel:
        target = self.catalog.find(target_name)
        if target is None:
            raise UnknownModel(
                f"--as {target_name!r} is not a catalog model; choose one of: "
                f"{', '.join(m.id for m in self.catalog.models)}",
                parameter="as",
            )
        if self.catalog.find(name) is not None:
            raise InvalidParameter(
                f"{name!r} is a catalog name: give your conversion a name of its own "
                f"(e.g. `my-{target.id}`); --as {target.id} makes it answer for {target.id}",
                parameter="name",
            )
        model_id = install.local_name(name)
        standins.check_can_stand_in(self.store, model_id, target)
        return install.register_files(
            self.store,
            model_id,
            target,
            text,
            mmproj,
            random_weights=target.random_weights,
            progress=progress,
            stands_in_for=target.id,
        )

    # -- looking after installed models ------------------------------------------------------

    def export_pack(self, name: str, dest_dir: Path, *, progress: bool = True) -> PackManifest:
        """Write an installed model as a pack into the new or empty directory ``dest_dir``."""
        record = self._installed(name)
        model = self.resolve(record.id)  # its files exist with their recorded sizes
        files: dict[Role, Path] = {"text": model.text, "mmproj": model.mmproj}
        return write_pack(record, files, dest_dir, progress=progress)

    def verify(self, name: str, *, progress: bool = True) -> VerifyReport:
        """Re-hash every file of an installed model against its recorded (or published) digest.

        A digest the catalog has learned since the install takes precedence over the recorded
        one. A passing check is recorded (``verified_at``).
        """
        record = self._installed(name)
        known = self.catalog.find(record.id)
        checks: list[FileCheck] = []
        for role in ROLES:
            installed = record.file(role)
            path = self.store.path_of(record, role)
            expected, source = installed.sha256, installed.digest_source
            published = known.files.get(installed.name) if known is not None else None
            if record.source != "local" and published is not None and published.sha256:
                expected, source = published.sha256, "manifest"
            actual = sha256_file(path, progress=progress) if path.is_file() else None
            checks.append(FileCheck(role, path, expected, actual, source))
        report = VerifyReport(record.id, tuple(checks), fix=reinstall_hint(record))
        if report.ok:
            files: dict[str, InstalledFile] = {
                c.role: record.file(c.role).model_copy(update={"digest_source": c.digest_source})
                for c in checks
            }
            self.store.save(record.model_copy(update={"verified_at": utc_now(), **files}))
        return report

    def remove(self, name: str) -> Removed:
        """Uninstall a model. Files registered by path are left where they are."""
        model_id, _ = self._identify(name)
        if not self.store.model_dir(model_id).is_dir():
            stand_in = self.stand_in(model_id)
            also = (
                f" (it is answered by the stand-in {stand_in.id}: `edgecap models rm "
                f"{stand_in.id}` removes that)"
                if stand_in is not None
                else ""
            )
            raise ModelNotReady(f"{model_id} is not installed; nothing to remove{also}")
        try:
            record = self.store.load(model_id)
        except ModelError:
            record = None  # an unreadable record must not block its own removal
        kept: tuple[Path, ...] = ()
        if record is not None and record.source == "local":
            kept = tuple(self.store.path_of(record, role) for role in ROLES)
        self.store.delete(model_id)
        return Removed(model_id, kept)

    def list(self) -> list[ModelStatus]:
        """Every known model, installed or not, then every other installed model."""
        installed = {record.id: record for record in self.store.all()}
        default_id = self._current_default_id(installed)
        serving = {r.stands_in_for: r.id for r in installed.values() if r.stands_in_for}
        statuses = [
            make_status(
                m, installed.get(m.id), is_default=m.id == default_id, served_by=serving.get(m.id)
            )
            for m in self.catalog.models
        ]
        statuses += [
            make_status(None, record, is_default=record.id == default_id)
            for record in installed.values()
            if self.catalog.find(record.id) is None
        ]
        return statuses

    def _current_default_id(self, installed: dict[str, InstalledModel]) -> str | None:
        if self.settings.model:
            try:
                return self._identify(self.settings.model)[0]
            except UnknownModel:
                return None
        if not installed:
            return None
        return min(installed.values(), key=self._default_rank).id
