"""The offline install bundle (``make wheelhouse``), built and installed for real.

Building needs PyPI for the dependencies' wheels; the portable llama-cpp-python wheel is compiled
once (~5+ minutes on 2 cores, longer on a busy machine) and cached under
``$XDG_CACHE_HOME/edgecap/wheels``, so a second run only copies it. In a fresh CI machine this
test pays that one compile. The install itself runs ``install.sh`` with ``--no-index``: no
network. Then the installed ``edgecap`` — not this checkout — runs ``doctor`` and captions an
image with the tiny model.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 3600  # includes the one-time llama.cpp compile on a slow machine
INSTALL_TIMEOUT_S = 900

pytestmark = pytest.mark.slow


def run(command: list[str], *, env: dict[str, str], timeout: float, cwd: Path = REPO) -> str:
    done = subprocess.run(
        command, env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_build_install_offline_and_caption(tmp_path: Path, tiny_gguf: tuple[Path, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGECAP_", "PYTHON"))}
    bundle = tmp_path / "wheelhouse"
    run([sys.executable, "tools/wheelhouse.py", "--out", str(bundle)], env=env,
        timeout=BUILD_TIMEOUT_S)  # fmt: skip

    # What the bundle holds, and that the manifest's digests are the files'.
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = {entry["file"] for entry in manifest["files"]}
    assert "install.sh" in names
    assert any(n.startswith("edgecap-0.") and n.endswith(".whl") for n in names)
    wheels = [n for n in names if n.startswith("llama_cpp_python-0.3.36-")]
    assert len(wheels) == 1, names
    assert manifest["llama_cpp_python"]["portable_cmake_args"] == "-DGGML_NATIVE=OFF"
    for name in ("fastapi", "uvicorn", "numpy", "pillow", "pydantic_settings", "gguf"):
        assert any(n.lower().startswith(name) for n in names), name
    for entry in manifest["files"]:
        digest = hashlib.sha256((bundle / entry["file"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"], entry["file"]
    with tarfile.open(bundle.with_name("wheelhouse.tar.gz")) as tar:
        assert f"wheelhouse/{wheels[0]}" in tar.getnames()

    # Install with no index at all, into a fresh venv, from the unpacked tarball.
    unpacked = tmp_path / "carried"
    with tarfile.open(bundle.with_name("wheelhouse.tar.gz")) as tar:
        tar.extractall(unpacked, filter="data")
    venv = tmp_path / "venv"
    offline = {**env, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    run(["sh", str(unpacked / "wheelhouse" / "install.sh"), str(venv)], env=offline,
        timeout=INSTALL_TIMEOUT_S, cwd=tmp_path)  # fmt: skip
    edgecap = venv / "bin" / "edgecap"
    assert edgecap.is_file()
    where = run([str(venv / "bin" / "python"), "-c", "import edgecap; print(edgecap.__file__)"],
                env=offline, timeout=60, cwd=tmp_path)  # fmt: skip
    assert where.startswith(str(venv)), where  # the installed package, not this checkout

    # The installed edgecap works: doctor (with its smoke caption) and a caption.
    home = tmp_path / "home"
    user = {**offline, "EDGECAP_HOME": str(home), "EDGECAP_OFFLINE": "1"}
    text, mmproj = tiny_gguf
    register = [str(edgecap), "models", "register", "edgecap-tiny-random", "--text", str(text),
                "--mmproj", str(mmproj), "--random-weights"]  # fmt: skip
    run(register, env=user, timeout=120, cwd=tmp_path)
    report = json.loads(run([str(edgecap), "doctor", "--json"], env=user, timeout=600,
                            cwd=tmp_path))  # fmt: skip
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["smoke"]["status"] == "ok", checks["smoke"]
    assert checks["versions"]["status"] != "fail", checks["versions"]
    sample = REPO / "edgecap" / "data" / "sample.jpg"
    out = run([str(edgecap), "caption", str(sample), "--max-tokens", "8", "--output", "json"],
              env=user, timeout=600, cwd=tmp_path)  # fmt: skip
    item = json.loads(out.splitlines()[-1])
    assert item["status"] == "success" and item["text"]
