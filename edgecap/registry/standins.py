"""Stand-ins: a local conversion answering for a catalog model whose published files are absent.

``edgecap models register my-qwen --text T --mmproj M --as qwen2.5-vl-7b-instruct`` records
my-qwen with ``stands_in_for = "qwen2.5-vl-7b-instruct"``; from then on the catalog id and its
aliases (``runware:152@2``, the slug) resolve to my-qwen. At most one stand-in per catalog
model. The published files always take precedence: once they are pulled or imported, the
stand-in is retired (it stays installed under its own name).
"""

from __future__ import annotations

from edgecap.errors import InvalidParameter
from edgecap.registry.catalog import KnownModel
from edgecap.registry.store import InstalledModel, Store


def stand_in_for(store: Store, model_id: str) -> InstalledModel | None:
    """The installed model standing in for the catalog model ``model_id``, if any."""
    return next((r for r in store.all() if r.stands_in_for == model_id), None)


def check_can_stand_in(store: Store, name: str, target: KnownModel) -> None:
    """Refuse a stand-in that could never answer, or that would take another's place."""
    if store.load(target.id) is not None:
        raise InvalidParameter(
            f"the published files of {target.id} are installed, and they answer for it: "
            f"register {name} without --as, or first remove them with "
            f"`edgecap models rm {target.id} --yes`",
            parameter="as",
        )
    current = stand_in_for(store, target.id)
    if current is not None and current.id != name:
        raise InvalidParameter(
            f"{current.id} already stands in for {target.id}: remove it first with "
            f"`edgecap models rm {current.id} --yes`",
            parameter="as",
        )


def retire(store: Store, model_id: str) -> InstalledModel | None:
    """The published ``model_id`` is installed now: its stand-in, if any, stops standing in.

    Returns the stand-in as it was (None if there was none).
    """
    current = stand_in_for(store, model_id)
    if current is not None:
        store.save(current.model_copy(update={"stands_in_for": None}))
    return current
