"""Quantize a converted GGUF with llama.cpp: the text model to K-quants, the projector to Q8_0.

    python tools/quantize.py INPUT.gguf [--type Q4_K_M|Q4_0|Q5_K_M|Q6_K|Q8_0|F16]
                             [--out PATH] [--mmproj] [--force] [--no-progress]

The input is an f32, f16 or bf16 file from tools/convert.py; text models take Q4_K_M (the
default), Q4_0, Q5_K_M, Q6_K or Q8_0, projectors Q8_0 (their default) or F16. The output
defaults to the input's name with the new type, e.g. ``X-f16.gguf`` -> ``X-Q4_K_M.gguf``. The
quantizer itself is :func:`edgecap.convert.quantize`; this script parses the arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __spec__ is None:  # run as a script: make edgecap importable from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecap.convert.progress import run_tool
from edgecap.convert.quantizer import (
    DEFAULT_MMPROJ_TYPE,
    DEFAULT_TEXT_TYPE,
    QUANT_TYPES,
    quantize,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantize.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, metavar="INPUT.gguf", help="f32/f16/bf16 GGUF file")
    parser.add_argument(
        "--type",
        dest="qtype",
        choices=list(QUANT_TYPES),
        help=f"default {DEFAULT_TEXT_TYPE} for a text model, {DEFAULT_MMPROJ_TYPE} for a projector",
    )
    parser.add_argument("--out", dest="dst", type=Path, help="output path (default: beside input)")
    parser.add_argument("--mmproj", action="store_true", help="the input must be a projector")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: [quantize(**vars(args))])


if __name__ == "__main__":
    sys.exit(main())
