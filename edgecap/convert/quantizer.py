"""Quantize a converted GGUF with llama.cpp: the text model to K-quants, the projector to Q8_0.

The input of :func:`quantize` is an f32, f16 or bf16 file from :func:`edgecap.convert.convert`.
Whether it is a text model or a vision projector is read from the file
(``general.architecture``): text models take Q4_K_M (the default), Q4_0, Q5_K_M, Q6_K or Q8_0;
projectors take Q8_0 (their default) or F16 — K-quants do not suit the vision tower, and on CPU
a quantized projector saves memory, not time. ``mmproj=True`` says the input must be a
projector. The output defaults to the input's name with the new type, e.g. ``X-f16.gguf`` ->
``X-Q4_K_M.gguf``. ``tools/quantize.py`` is the command line.

llama.cpp's ``llama_model_quantize`` runs in a child process: a native abort on a bad file
then cannot take the caller down, and its per-tensor log lines drive the progress bar.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgecap.convert.progress import progress_bar, staged_outputs
from edgecap.engine.gguf_check import MMPROJ_ARCH, check_mmproj, check_text_model, read_header
from edgecap.errors import ConversionError, ModelError


@dataclass(frozen=True)
class QuantType:
    """One ``--type``: the llama_ftype it asks llama.cpp for, and which files may take it."""

    ftype: int
    label: str  # in file names, as in the published files
    text: bool
    mmproj: bool


QUANT_TYPES = {
    "Q4_K_M": QuantType(15, "Q4_K_M", text=True, mmproj=False),
    "Q4_0": QuantType(2, "Q4_0", text=True, mmproj=False),
    "Q5_K_M": QuantType(17, "Q5_K_M", text=True, mmproj=False),
    "Q6_K": QuantType(18, "Q6_K", text=True, mmproj=False),
    "Q8_0": QuantType(7, "Q8_0", text=True, mmproj=True),
    "F16": QuantType(1, "f16", text=False, mmproj=True),
}
DEFAULT_TEXT_TYPE, DEFAULT_MMPROJ_TYPE = "Q4_K_M", "Q8_0"
# llama_ftype values of unquantized files: quantizing again from a quantized file loses quality
# twice, so llama.cpp refuses it, and so do we, earlier and more clearly.
SOURCE_FILE_TYPES = {0: "f32", 1: "f16", 32: "bf16"}
# The name suffixes tools/convert.py writes; a default output name replaces them.
TYPE_SUFFIX = re.compile(r"-(f32|f16|bf16|F32|F16|BF16)$")
PROGRESS_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")

# The child: one call into llama.cpp. Its log goes to stderr through llama-cpp-python's default
# callback; the exit status is llama_model_quantize's result (0 = success).
CHILD = """
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
src, dst = (arg.encode(sys.getfilesystemencoding()) for arg in sys.argv[1:3])
sys.exit(llama_cpp.llama_model_quantize(src, dst, ctypes.byref(params)))
"""


def default_output(src: Path, qtype: str) -> Path:
    """``X-f16.gguf`` -> ``X-<type>.gguf`` beside the input."""
    stem = TYPE_SUFFIX.sub("", src.stem)
    return src.with_name(f"{stem}-{QUANT_TYPES[qtype].label}.gguf")


def inspect_source(src: Path, mmproj: bool) -> bool:
    """Validate the input; return whether it is a projector. Errors are ConversionErrors."""
    try:
        header = read_header(src, "input")
        is_mmproj = header.architecture == MMPROJ_ARCH
        if mmproj and not is_mmproj:
            raise ConversionError(
                f"--mmproj was given, but {src} is a {header.architecture or 'unknown'!r} "
                "model, not a vision projector. Drop --mmproj to quantize a text model.",
                parameter="mmproj",
            )
        if is_mmproj:
            check_mmproj(src)
        else:
            check_text_model(src)
    except ModelError as exc:
        raise ConversionError(exc.message, parameter="input") from exc
    file_type = header.metadata.get("general.file_type")
    if file_type is not None and file_type not in SOURCE_FILE_TYPES:
        raise ConversionError(
            f"{src} is already quantized (llama_ftype {file_type}); quantize from the f32, f16 "
            "or bf16 file of tools/convert.py instead.",
            parameter="input",
        )
    return is_mmproj


def choose_type(qtype: str | None, src: Path, is_mmproj: bool) -> str:
    """The ``--type`` to use, checked against what the input file is."""
    if qtype is None:
        return DEFAULT_MMPROJ_TYPE if is_mmproj else DEFAULT_TEXT_TYPE
    if qtype not in QUANT_TYPES:
        raise ConversionError(
            f"Unknown quantization type {qtype!r}; choose one of {', '.join(QUANT_TYPES)}.",
            parameter="type",
        )
    kind = QUANT_TYPES[qtype]
    if is_mmproj and not kind.mmproj:
        allowed = ", ".join(name for name, t in QUANT_TYPES.items() if t.mmproj)
        raise ConversionError(
            f"{src} is a vision projector, and {qtype} is for text models; projectors take "
            f"{allowed}.",
            parameter="type",
        )
    if not is_mmproj and not kind.text:
        allowed = ", ".join(name for name, t in QUANT_TYPES.items() if t.text)
        raise ConversionError(
            f"{src} is a text model, and {qtype} is for vision projectors; text models take "
            f"{allowed} (for an f16 text model, convert with --outtype f16).",
            parameter="type",
        )
    return qtype


def run_llama_quantize(src: Path, dst: Path, ftype: int, progress: bool) -> None:
    """Run llama_model_quantize in a child process, showing its per-tensor progress."""
    command = [sys.executable, "-c", CHILD, str(src), str(dst), str(ftype)]
    last_lines: deque[str] = deque(maxlen=5)
    with (
        subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        ) as child,
        progress_bar(0, f"quantizing {src.name}", enabled=progress, unit="tensor") as bar,
    ):
        assert child.stderr is not None
        try:
            for line in child.stderr:
                if match := PROGRESS_LINE.match(line):
                    bar.total = int(match.group(2))
                    bar.n = int(match.group(1))
                    bar.refresh()
                elif line.strip():
                    last_lines.append(line.strip())
            status = child.wait()
        finally:
            if child.poll() is None:
                child.kill()
    if status != 0:
        what = (
            f"crashed (signal {-status}) while quantizing" if status < 0 else "could not quantize"
        )
        raise ConversionError(f"llama.cpp {what} {src}: {reason(last_lines)}")


def reason(lines: Sequence[str]) -> str:
    """llama.cpp's own error line if it printed one, else its last lines."""
    errors = [line for line in lines if re.search(r"error|fail", line, re.IGNORECASE)]
    return errors[-1] if errors else " / ".join(lines) or "(no message)"


def quantize(
    src: Path,
    dst: Path | None = None,
    qtype: str | None = None,
    force: bool = False,
    *,
    mmproj: bool = False,
    progress: bool = True,
) -> Path:
    """Quantize the GGUF ``src`` to ``qtype`` at ``dst``; return ``dst``.

    ``qtype`` defaults to Q4_K_M for a text model and Q8_0 for a projector; ``dst`` to
    :func:`default_output`. ``mmproj=True`` requires ``src`` to be a projector. The output
    appears only when complete. Raises ConversionError for a wrong input or type, an existing
    output without ``force``, or a llama.cpp failure.
    """
    src = Path(src)
    is_mmproj = inspect_source(src, mmproj)
    qtype = choose_type(qtype, src, is_mmproj)
    dst = Path(dst) if dst is not None else default_output(src, qtype)
    if dst.resolve() == src.resolve():
        raise ConversionError(f"The output {dst} is the input; choose another --out.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with staged_outputs([dst], force) as (partial,):
        run_llama_quantize(src, partial, QUANT_TYPES[qtype].ftype, progress)
    return dst
