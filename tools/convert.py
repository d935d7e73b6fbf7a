"""Convert a Qwen2.5-VL checkpoint (Hugging Face safetensors) to the two GGUF files llama.cpp runs.

    python tools/convert.py CHECKPOINT_DIR --outdir DIR [--outtype f32|f16|bf16|q8_0]
                            [--name NAME] [--force] [--no-progress]

writes ``DIR/<name>-<type>.gguf`` (the text model) and ``DIR/mmproj-<name>-<type>.gguf`` (the
vision projector). For K-quants (Q4_K_M, ...) run tools/quantize.py on the result. The converter
itself is :func:`edgecap.convert.convert` (docs/models.md); this script parses the arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __spec__ is None:  # run as a script: make edgecap importable from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecap.convert.converter import OUTTYPES, convert, projector_type_for
from edgecap.convert.progress import run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="Hugging Face checkpoint directory")
    parser.add_argument("--outdir", type=Path, required=True, help="where to write the files")
    parser.add_argument(
        "--outtype",
        choices=list(OUTTYPES),
        default="f16",
        help="tensor type of the weights (default f16; bf16 keeps a bf16 release exact)",
    )
    parser.add_argument(
        "--mmproj-type",
        choices=list(OUTTYPES),
        default=None,
        help=(
            "tensor type of the vision projector (default: with a 16-bit --outtype, the 16-bit "
            f"type this CPU encodes fastest — {projector_type_for('f16')} here, `edgecap doctor` "
            "says why; otherwise the same as --outtype)"
        ),
    )
    parser.add_argument("--name", help="model name in file names (default: checkpoint dir name)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: convert(**vars(args)))


if __name__ == "__main__":
    sys.exit(main())
