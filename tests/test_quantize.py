"""edgecap.convert.quantize (and tools/quantize.py): quantized tiny models that llama.cpp loads,
the type rules for text models and projectors, and clear errors on wrong inputs. (Logit-level
parity is tests/test_parity.py's.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType

from edgecap.convert.quantizer import QUANT_TYPES, default_output, quantize
from edgecap.engine.gguf_check import check_mmproj, check_pair, read_header
from edgecap.errors import ConversionError
from tools.quantize import main

REPO = Path(__file__).resolve().parent.parent


def load_and_eval(text: Path, mmproj: Path | None = None) -> None:
    """Load the text model (and projector) in llama.cpp and run one token through every layer.

    One token, not a prompt: on CPUs with AMX, this llama.cpp build's AMX path for quantized
    weights crashes the process on any batch of two or more tokens (use_extra_bufts=False in the
    model params avoids it); that is the engine's concern, not the quantizer's.
    """
    from llama_cpp import mtmd_cpp

    llm = llama_cpp.Llama(str(text), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    assert llm.tokenize(b"<|im_start|>", add_bos=False, special=True) == [151644]
    llm.eval([151644])
    logits = llm.scores[0]
    assert np.isfinite(logits).all() and logits.std() > 0.1
    if mmproj is not None:
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.warmup = False, 2, False
        ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
        assert ctx and mtmd_cpp.mtmd_support_vision(ctx)
        mtmd_cpp.mtmd_free(ctx)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_text_model_quantizes_and_loads(
    qtype: str, tiny_gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    out = quantize(tiny_gguf[0], tmp_path / f"text-{qtype}.gguf", qtype, progress=False)
    info, _ = check_pair(out, tiny_gguf[1])
    assert info.file_type == QUANT_TYPES[qtype].ftype
    tensors = read_header(out).tensors
    assert tensors["blk.0.attn_output.weight"].type != GGMLQuantizationType.F32
    assert tensors["blk.0.attn_norm.weight"].type == GGMLQuantizationType.F32
    assert out.stat().st_size < tiny_gguf[0].stat().st_size / 3
    load_and_eval(out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_projector_defaults_to_q8_0(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    src = shutil.copy(tiny_gguf[1], tmp_path / "mmproj-tiny-f32.gguf")
    out = quantize(Path(src), mmproj=True, progress=False)
    assert out == tmp_path / "mmproj-tiny-Q8_0.gguf"
    assert check_mmproj(out).file_type == 7
    tensors = read_header(out).tensors
    assert tensors["v.blk.0.attn_q.weight"].type == GGMLQuantizationType.Q8_0
    # 342 columns do not split into blocks of 32: llama.cpp falls back, as for the 7B's 3420
    assert tensors["v.blk.0.ffn_down.weight"].type == GGMLQuantizationType.F16
    load_and_eval(tiny_gguf[0], out)


def test_command_line(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "mmproj-f16.gguf"
    args = [str(tiny_gguf[1]), "--type", "F16", "--out", str(out), "--no-progress"]
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "quantize.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, f"{out}\n", "")
    assert check_mmproj(out).file_type == 1


def test_default_output_names() -> None:
    assert default_output(Path("m/X-f16.gguf"), "Q4_K_M") == Path("m/X-Q4_K_M.gguf")
    assert default_output(Path("m/X-BF16.gguf"), "Q6_K") == Path("m/X-Q6_K.gguf")
    assert default_output(Path("mmproj-X-f32.gguf"), "F16") == Path("mmproj-X-f16.gguf")
    assert default_output(Path("model.gguf"), "Q8_0") == Path("model-Q8_0.gguf")


# -- wrong inputs -------------------------------------------------------------------------------


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([*argv, "--no-progress"])
    captured = capsys.readouterr()
    assert captured.out == "" or code == 0
    return code, captured.err


def test_wrong_file_kinds(
    tiny_gguf: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, mmproj = (str(p) for p in tiny_gguf)
    out = ["--out", str(tmp_path / "out.gguf")]
    cases = {
        (text, "--mmproj"): "--mmproj was given, but " + text + " is a 'qwen2vl' model",
        (mmproj, "--type", "Q4_K_M"): "is a vision projector, and Q4_K_M is for text models; "
        "projectors take Q8_0, F16.",
        (text, "--type", "F16"): "is a text model, and F16 is for vision projectors",
    }
    for argv, message in cases.items():
        code, err = run_main([*argv, *out], capsys)
        assert code == 2 and message in err and "Traceback" not in err, argv
    assert list(tmp_path.iterdir()) == []


def test_not_a_gguf_or_truncated(
    tiny_gguf: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "model.safetensors"
    foreign.write_bytes(b"not a gguf file at all")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf[1].read_bytes()[:100_000])
    for src, message in [(foreign, "is not a GGUF file"), (cut, "is truncated")]:
        code, err = run_main([str(src)], capsys)
        assert code == 2 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "model.safetensors"]


def test_already_quantized_input_is_refused(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    q8 = quantize(tiny_gguf[0], tmp_path / "q8.gguf", "Q8_0", progress=False)
    with pytest.raises(ConversionError, match=r"already quantized \(llama_ftype 7\)"):
        quantize(q8, tmp_path / "q4.gguf", "Q4_K_M", progress=False)


def test_existing_output_is_kept_unless_forced(
    tiny_gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "text.gguf"
    out.write_bytes(b"mine")
    with pytest.raises(ConversionError, match="already exists; pass --force"):
        quantize(tiny_gguf[0], out, "Q4_0", progress=False)
    assert out.read_bytes() == b"mine"
    quantize(tiny_gguf[0], out, "Q4_0", force=True, progress=False)
    assert read_header(out).metadata["general.file_type"] == 2


def test_output_cannot_be_the_input(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    src = Path(shutil.copy(tiny_gguf[1], tmp_path / "m.gguf"))
    with pytest.raises(ConversionError, match="is the input"):
        quantize(src, src, "Q8_0", force=True, progress=False)
    check_mmproj(src)


def test_llama_cpp_failure_is_reported(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    # Our checks accept any integer type; llama.cpp wants u32 for the context length and says so.
    src = Path(shutil.copy(tiny_gguf[0], tmp_path / "i32.gguf"))
    key = b"qwen2vl.context_length"
    with src.open("r+b") as f:
        at = f.read(1 << 16).index(key) + len(key)
        f.seek(at)
        assert f.read(4) == (GGUFValueType.UINT32).to_bytes(4, "little")
        f.seek(at)
        f.write((GGUFValueType.INT32).to_bytes(4, "little"))
    with pytest.raises(ConversionError) as raised:
        quantize(src, tmp_path / "out.gguf", "Q8_0", progress=False)
    assert raised.value.message == (
        f"llama.cpp could not quantize {src}: llama_model_quantize: failed to quantize: key "
        "qwen2vl.context_length has wrong type i32 but expected type u32"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i32.gguf"]
