"""Write a Qwen2.5-VL checkpoint in the original Hugging Face layout, with seeded random weights.

    python tools/make_tiny_model.py OUTDIR [--preset tiny|bench|7b] [--seed 0]
                                    [--text-layers N] [--vision-blocks N] [--shard-size 2GB]
                                    [--force]

The same seed gives byte-identical files. The builder itself is
:func:`edgecap.tiny.make_checkpoint` (presets, weight scales and the tokenizer:
docs/tiny-model.md); this script parses the arguments and prints the directory it wrote.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if __spec__ is None:  # run as a script: make edgecap importable from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecap.errors import EdgecapError
from edgecap.tiny import PRESETS, make_checkpoint

SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: str) -> int:
    """``"2GB"`` -> 2_000_000_000 bytes; also KB/MB, KiB/MiB/GiB and plain byte counts."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; write e.g. 2GB, 500MB or 1048576"
        )
    size = int(float(match.group(1)) * SIZE_UNITS[unit])
    if size <= 0:
        raise argparse.ArgumentTypeError("the shard size must be more than 0 bytes")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_tiny_model.py",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("outdir", type=Path, help="directory to write (empty unless --force)")
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="tiny",
        help="tiny: for tests (default); bench: 7B widths, few layers; 7b: the full shape",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="default 0")
    parser.add_argument("--text-layers", type=int, metavar="N", help="override the preset's")
    parser.add_argument("--vision-blocks", type=int, metavar="N", help="override the preset's")
    parser.add_argument(
        "--shard-size",
        type=parse_size,
        metavar="SIZE",
        help="split the weights into shards of at most SIZE, e.g. 500MB (default 2GB)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the checkpoint files in a non-empty OUTDIR"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        outdir = make_checkpoint(**vars(args))
    except EdgecapError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
