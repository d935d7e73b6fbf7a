"""The environment tests run in: no stray ``EDGECAP_*`` variables, and what subprocesses get."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
PREFIX = "EDGECAP_"


def edgecap_variables() -> dict[str, str]:
    """The ``EDGECAP_*`` variables of this process."""
    return {name: value for name, value in os.environ.items() if name.startswith(PREFIX)}


def clear_edgecap_variables() -> dict[str, str]:
    """Remove every ``EDGECAP_*`` variable from this process; return what was removed."""
    removed = edgecap_variables()
    for name in removed:
        del os.environ[name]
    return removed


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a subprocess: this one (already clean of the developer's
    ``EDGECAP_*`` variables; the test's ``EDGECAP_HOME`` stays), the checkout on PYTHONPATH,
    then ``overrides``."""
    return {**os.environ, "PYTHONPATH": str(REPO), **overrides}


def require(module: str) -> ModuleType:
    """Import a test dependency; fail (never skip) with the fix when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is not installed ({exc}): run `make test`, which installs it")
