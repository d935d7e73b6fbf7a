"""Build an offline install bundle: wheels for edgecap and every runtime dependency.

    python tools/wheelhouse.py [--out dist/wheelhouse] [--cache DIR] [--tuned]

The folder (and ``<folder>.tar.gz`` beside it) holds:

- ``edgecap-<version>-py3-none-any.whl`` and a wheel for each runtime dependency, for this
  Python version and platform;
- a portable ``llama_cpp_python`` wheel, compiled with ``CMAKE_ARGS=-DGGML_NATIVE=OFF`` (on
  x86-64 that targets AVX2/FMA/F16C CPUs, Haswell and later, rather than this CPU). The compile
  takes ~5+ minutes on 2 cores, so the wheel is cached under ``--cache`` (default
  ``$XDG_CACHE_HOME/edgecap/wheels``), keyed by version, Python tag, platform and build flags;
- with ``--tuned``, a second llama_cpp_python wheel tuned to this CPU (``GGML_NATIVE=ON``) in
  ``tuned/``, which ``install.sh --tuned`` installs instead;
- ``manifest.json`` (every file with its size and sha256) and ``SHA256SUMS``;
- ``install.sh``, which checks the digests and installs with ``pip install --no-index
  --find-links`` into a new virtual environment.

Building needs PyPI (or a mirror pip is configured for); installing needs nothing. Standard
library only: it runs with the Python whose wheels it collects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = ROOT / "tools" / "wheelhouse_install.sh"
LLAMA = "llama-cpp-python"
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF"
TUNED_CMAKE_ARGS = "-DGGML_NATIVE=ON"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "wheelhouse")
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument(
        "--tuned", action="store_true", help="also build a llama_cpp_python tuned to this CPU"
    )
    args = parser.parse_args(argv)
    try:
        tarball = build(args.out.resolve(), args.cache.resolve(), tuned=args.tuned)
    except (BuildFailed, OSError) as exc:
        print(f"wheelhouse: error: {exc}", file=sys.stderr)
        return 2
    print(f"wheelhouse: {args.out} and {tarball}")
    return 0


class BuildFailed(Exception):
    """A pip step failed; the message names it."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecap" / "wheels"


def pinned_llama_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The exact llama-cpp-python version edgecap pins."""
    deps = tomllib.loads(pyproject.read_text("utf-8"))["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(rf"{LLAMA}==([\w.]+)", dep.replace(" ", ""))
        if match:
            return match.group(1)
    raise BuildFailed(f"pyproject.toml does not pin {LLAMA} exactly")


def build(out: Path, cache: Path, *, tuned: bool = False) -> Path:
    """Fill ``out`` with the bundle (replacing what was there); returns the tarball's path."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    version = pinned_llama_version()
    portable = llama_wheel(cache, version, PORTABLE_CMAKE_ARGS)
    shutil.copy2(portable, out / portable.name)
    if tuned:
        (out / "tuned").mkdir()
        # Tuned to this CPU: rebuilt every time, never cached (the cache may move machines).
        with tempfile.TemporaryDirectory() as tmp:
            wheel = compile_llama(Path(tmp), version, TUNED_CMAKE_ARGS)
            shutil.copy2(wheel, out / "tuned" / wheel.name)
    pip("wheel", "--no-deps", "--wheel-dir", str(out), str(ROOT))
    edgecap_wheel = next(out.glob("edgecap-*.whl"))
    # Every runtime dependency as a wheel; llama-cpp-python only from the portable build.
    pip(
        "wheel",
        "--wheel-dir",
        str(out),
        "--find-links",
        str(portable.parent),
        "--only-binary",
        LLAMA,
        str(edgecap_wheel),
    )
    shutil.copy2(INSTALL_SCRIPT, out / "install.sh")
    (out / "install.sh").chmod(0o755)
    write_manifest(out, version, tuned=tuned)
    return make_tarball(out)


def llama_wheel(cache: Path, version: str, cmake_args: str) -> Path:
    """The cached llama_cpp_python wheel built with ``cmake_args``; compiled if absent."""
    key = hashlib.sha256(cmake_args.encode()).hexdigest()[:12]
    slot = cache / f"{LLAMA}-{version}-{python_tag()}-{sysconfig.get_platform()}-{key}"
    found = sorted(slot.glob("*.whl"))
    if found:
        print(f"wheelhouse: using the cached {found[0].name} ({cmake_args})")
        return found[0]
    print(f"wheelhouse: compiling {LLAMA} {version} with {cmake_args} (~5+ min on 2 cores)")
    slot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=slot.parent) as tmp:
        wheel = compile_llama(Path(tmp), version, cmake_args)
        staged = Path(tmp) / "slot"
        staged.mkdir()
        wheel.rename(staged / wheel.name)
        staged.rename(slot)  # atomic: a half-built wheel is never found in the cache
    return slot / wheel.name


def compile_llama(workdir: Path, version: str, cmake_args: str) -> Path:
    """Build llama_cpp_python from source into ``workdir``. ``--no-cache-dir``: else pip
    would hand back a wheel it built earlier, maybe tuned to another CPU."""
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "FORCE_CMAKE": "1"}
    pip(
        "wheel",
        "--no-deps",
        "--no-cache-dir",
        "--no-binary",
        LLAMA,
        "--wheel-dir",
        str(workdir),
        f"{LLAMA}=={version}",
        env=env,
    )
    return next(workdir.glob("llama_cpp_python-*.whl"))


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    if subprocess.run(command, env=env, check=False).returncode != 0:
        raise BuildFailed(f"`pip {' '.join(args[:2])} ...` failed (its output is above)")


def write_manifest(out: Path, llama_version: str, *, tuned: bool) -> None:
    """``manifest.json`` and ``SHA256SUMS`` for every file of the bundle."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    entries = [
        {"file": p.relative_to(out).as_posix(), "size": p.stat().st_size, "sha256": sha256(p)}
        for p in files
    ]
    manifest = {
        "format": 1,
        "python": python_tag(),
        "platform": sysconfig.get_platform(),
        "llama_cpp_python": {
            "version": llama_version,
            "portable_cmake_args": PORTABLE_CMAKE_ARGS,
            "tuned_cmake_args": TUNED_CMAKE_ARGS if tuned else None,
        },
        "files": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    sums = "".join(f"{e['sha256']}  {e['file']}\n" for e in entries)
    (out / "SHA256SUMS").write_text(sums, "utf-8")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_tarball(out: Path) -> Path:
    tarball = out.with_name(out.name + ".tar.gz")
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    return tarball


if __name__ == "__main__":
    sys.exit(main())
