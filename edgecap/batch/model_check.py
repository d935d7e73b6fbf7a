"""The model an engine actor loads: the driver's files, found again on the actor's node.

The driver describes its model by path and sha256 (:func:`describe_model`). Each engine actor,
when it starts, looks for exactly those bytes (:func:`model_on_this_node`): at the same paths
(shared storage), else in its node's own registry (``edgecap models import`` of the same pack),
hashing the files to be sure. A node without them fails that actor with a message saying how
to put the model there.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from edgecap.config import Settings, load_settings
from edgecap.errors import EdgecapError, ModelNotReady
from edgecap.records import ModelFiles
from edgecap.registry import Registry
from edgecap.registry.digests import sha256_file


@dataclass(frozen=True)
class ModelCheck:
    """A model by identity: its id, where the driver has it, and the sha256 of each file."""

    id: str
    text: Path
    mmproj: Path
    text_sha256: str
    mmproj_sha256: str
    random_weights: bool = False

    def files(self, text: Path, mmproj: Path) -> ModelFiles:
        return ModelFiles(self.id, text, mmproj, self.random_weights)


def describe_model(files: ModelFiles, settings: Settings) -> ModelCheck:
    """The driver's model with the digests its registry recorded (hashed if it has none)."""
    record = Registry(settings).store.load(files.id)
    if record is not None:
        text_sha, mmproj_sha = record.text.sha256, record.mmproj.sha256
    else:
        text_sha, mmproj_sha = sha256_file(files.text), sha256_file(files.mmproj)
    return ModelCheck(
        files.id, files.text, files.mmproj, text_sha, mmproj_sha, files.random_weights
    )


def model_on_this_node(
    check: ModelCheck, settings: Settings | None = None, *, node: str | None = None
) -> ModelFiles:
    """The files of ``check`` on this machine, their digests verified; else ModelNotReady.

    ``settings`` (default: this node's environment) says where this node's registry is;
    ``node`` is how the message names this node (default: its host name).
    """
    if _holds(check, check.text, check.mmproj):
        return check.files(check.text, check.mmproj)
    try:
        here = Registry(settings or load_settings()).resolve(check.id)
    except EdgecapError:
        here = None
    if here is not None and _holds(check, here.text, here.mmproj):
        return check.files(here.text, here.mmproj)
    raise ModelNotReady(
        f"node {node or socket.gethostname()} does not have the model {check.id} (not at "
        f"{check.text}, nor with the same sha256 in its own registry): "
        f"{how_to_place(check.id)}",
        parameter="model",
    )


def how_to_place(model_id: str, *, every_node: bool = False) -> str:
    """The two ways to put a model on a node (or on every node), as an instruction."""
    where, there = ("every node", "on each") if every_node else ("this node", "there")
    return (
        "put the model files on storage every node mounts at the same path, or copy a pack "
        f"made by `edgecap models export {model_id} DIR` to {where} and run `edgecap models "
        f"import DIR` {there}."
    )


def _holds(check: ModelCheck, text: Path, mmproj: Path) -> bool:
    if not (text.is_file() and mmproj.is_file()):
        return False
    return sha256_file(text) == check.text_sha256 and sha256_file(mmproj) == check.mmproj_sha256
