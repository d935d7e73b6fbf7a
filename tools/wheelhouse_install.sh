#!/bin/sh
# Install edgecap from this folder, with no network: ./install.sh [VENV] [--tuned]
#
#   VENV     the virtual environment to create or reuse (default: ./edgecap-venv)
#   --tuned  use the llama_cpp_python wheel tuned to the CPU it was built on (tuned/), if the
#            bundle has one; only on a machine with the same CPU features
#
# Every file is checked against SHA256SUMS first. Needs python3 (the same minor version the
# bundle was built with, see manifest.json) with its venv module.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=./edgecap-venv
tuned=no
for arg in "$@"; do
    case "$arg" in
        --tuned) tuned=yes ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        -*) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
        *) venv=$arg ;;
    esac
done
python=${PYTHON:-python3}

if command -v sha256sum >/dev/null 2>&1; then
    (cd "$here" && sha256sum --check --quiet SHA256SUMS) || {
        echo "install.sh: a file of the bundle does not match SHA256SUMS; copy it again" >&2
        exit 1
    }
fi

"$python" -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check"
$pip install --no-index --find-links "$here" edgecap
if [ "$tuned" = yes ]; then
    set -- "$here"/tuned/llama_cpp_python-*.whl
    if [ ! -f "$1" ]; then
        echo "install.sh: this bundle has no tuned wheel (build it with make wheelhouse TUNED=1)" >&2
        exit 2
    fi
    $pip install --no-index --no-deps --force-reinstall "$1"
fi
echo "installed: $venv/bin/edgecap  (next: $venv/bin/edgecap doctor)"
