"""Known models, the local model store, packs and digests.

``Registry(settings)`` is the one entry point: ``resolve`` a name to the files llama.cpp
loads; ``pull``, ``import_pack`` and ``register_local`` install; ``verify``, ``export_pack``
and ``remove`` look after what is installed. See docs/models.md.
"""

from edgecap.registry.catalog import Catalog, KnownModel, load_catalog
from edgecap.registry.packs import PACK_FILE, PackManifest
from edgecap.registry.registry import Registry
from edgecap.registry.status import FileCheck, ModelStatus, Removed, VerifyReport
from edgecap.registry.store import InstalledModel

__all__ = [
    "PACK_FILE",
    "Catalog",
    "FileCheck",
    "InstalledModel",
    "KnownModel",
    "ModelStatus",
    "PackManifest",
    "Registry",
    "Removed",
    "VerifyReport",
    "load_catalog",
]
