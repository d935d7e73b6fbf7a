"""The package stands on its own: a wheel built from this checkout, installed into a fresh virtual
environment outside it, runs ``edgecap demo`` (building the tiny model from package code and
data only) and the Python API, from a directory that is not the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Guards against a hung child, not timings. Installing the dependencies downloads them (or
# takes them from pip's cache); llama-cpp-python is never compiled here (see below).
INSTALL_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 600
# What the installed package reads at run time: the demo's picture, the model catalog, the
# tiny-model builder and the converter (which `edgecap demo` once took from tools/).
PACKAGE_FILES = (
    "edgecap/data/sample.jpg",
    "edgecap/data/manifest.json",
    "edgecap/py.typed",
    "edgecap/tiny/tokenizer.py",
    "edgecap/tiny/writer.py",
    "edgecap/convert/converter.py",
    "edgecap/convert/quantizer.py",
)
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def run(
    command: list[str], *, timeout: float, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"{command[:4]} failed:\n{output}"
    return done


def cached_llama_wheel(dest: Path) -> Path:
    """A directory holding the llama-cpp-python wheel that pip built when `make test` installed
    edgecap. PyPI has only its source, which takes minutes of compiling: the fresh environment
    takes this wheel instead (--find-links, --only-binary), so the test never compiles it."""
    listed = run(
        [sys.executable, "-m", "pip", "cache", "list", "llama_cpp_python", "--format=abspath"],
        timeout=60,
        cwd=dest.parent,
    ).stdout.split()
    wheels = [Path(p) for p in listed if Path(p).name.startswith("llama_cpp_python-0.3.36-")]
    assert wheels, (
        "pip's cache holds no llama_cpp_python-0.3.36 wheel: install edgecap first (make test "
        "builds and caches it), and do not disable pip's cache."
    )
    dest.mkdir()
    shutil.copy(wheels[0], dest / wheels[0].name)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 3 * RUN_TIMEOUT_S)
def test_edgecap_demo_runs_from_a_wheel_installed_outside_the_checkout(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source, dist = tmp_path / "source", tmp_path / "dist"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "-w", str(dist), str(source)], timeout=600, cwd=tmp_path)
    [wheel] = dist.glob("edgecap-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGE_FILES) <= names, set(PACKAGE_FILES) - names
    assert not any(name.startswith(("tools/", "tests/")) for name in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=300, cwd=tmp_path)
    python, edgecap_bin = venv / "bin" / "python", venv / "bin" / "edgecap"
    llama_wheels = cached_llama_wheel(tmp_path / "wheels")
    run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
         "--find-links", str(llama_wheels), "--only-binary", "llama-cpp-python", str(wheel)],
        timeout=INSTALL_TIMEOUT_S,
        cwd=tmp_path,
    )  # fmt: skip

    # Elsewhere: no checkout on the path, no stray EDGECAP_* settings, a home of its own.
    elsewhere, home = tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_")}
    env.pop("PYTHONPATH", None)
    env["EDGECAP_HOME"] = str(home)
    where = run(
        [str(python), "-c", "import edgecap; print(edgecap.__file__)"],
        timeout=RUN_TIMEOUT_S,
        cwd=elsewhere,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)

    demo = run([str(edgecap_bin), "demo"], timeout=RUN_TIMEOUT_S, cwd=elsewhere, env=env)
    [item] = json.loads(demo.stdout)["data"]
    assert list(item) == ["taskType", "taskUUID", "status", "text"]
    assert (item["taskType"], item["status"]) == ("imageCaption", "success")
    assert uuid.UUID(item["taskUUID"]).version == 4 and item["text"]
    err = [line for line in demo.stderr.splitlines() if not line.startswith("load_hparams:")]
    assert err[0] == (
        "building the demo model edgecap-tiny-random (random weights; once, a few seconds) ..."
    )
    assert err[-1].startswith("That caption is noise: edgecap-tiny-random has random weights;")
    assert "Traceback" not in demo.stderr
    assert (home / "demo" / "edgecap-tiny-random" / "edgecap-tiny-random.gguf").is_file()

    # ...and the Python API of the installed wheel captions with the model the demo built.
    api = run(
        [str(python), "-W", "ignore", "-c",
         "import edgecap; print(edgecap.caption(edgecap.__path__[0] + '/data/sample.jpg',"
         " max_tokens=8).model)"],
        timeout=RUN_TIMEOUT_S,
        cwd=elsewhere,
        env=env,
    )  # fmt: skip
    assert api.stdout == "edgecap-tiny-random\n"
