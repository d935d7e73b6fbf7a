"""The suite itself: the shell's EDGECAP_* variables never reach a test or its subprocesses,
test modules share code only through tests.support, and a missing dependency fails."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import REPO, child_env, edgecap_variables

TESTS = Path(__file__).resolve().parent
# Each of these would break some test if it leaked: fewer tokens, a smaller context, a model
# that does not exist, no network, another home, another prompt.
STRAY = {
    "EDGECAP_MAX_TOKENS": "1",
    "EDGECAP_N_CTX": "600",
    "EDGECAP_MODEL": "no-such-model",
    "EDGECAP_OFFLINE": "true",
    "EDGECAP_HOME": "/nonexistent/edgecap-home",
    "EDGECAP_DEFAULT_PROMPT": "a stray prompt",
}
PYTEST_TIMEOUT_S = 300


def test_a_test_sees_only_its_own_home(edgecap_home: Path) -> None:
    assert edgecap_variables() == {"EDGECAP_HOME": str(edgecap_home)}
    child = {name for name in child_env() if name.startswith("EDGECAP_")}
    assert child == {"EDGECAP_HOME"}


@pytest.mark.slow
def test_stray_variables_in_the_shell_do_not_reach_the_tests() -> None:
    """pytest in a child whose shell sets STRAY, on tests that depend on the defaults."""
    selected = [
        f"{Path(__file__).relative_to(REPO)}::test_a_test_sees_only_its_own_home",
        "tests/test_cli_caption.py::test_one_image_streams_text",  # the default maxTokens
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *selected],
        cwd=REPO,
        env=child_env(**STRAY),
        capture_output=True,
        text=True,
        timeout=PYTEST_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"ignoring from the shell: {', '.join(sorted(STRAY))}" in done.stdout
    assert "2 passed" in done.stdout


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_test_modules_share_code_only_through_tests_support() -> None:
    offenders = {
        f"{path.name} imports {name}"
        for path in sorted(TESTS.glob("test_*.py"))
        for name in imported_modules(path)
        if any(part.startswith("test_") for part in name.split("."))
        or (name.split(".")[0] == "tests" and not name.startswith("tests.support"))
    }
    assert not offenders, "move what is shared into tests/support/: " + "; ".join(offenders)


def test_no_test_skips_for_a_missing_dependency() -> None:
    """A missing llama_cpp, torch or transformers must fail the suite, not shrink it
    (tests.support.env.require names the fix)."""
    offenders = [
        path.name
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__).resolve() and "importorskip" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
