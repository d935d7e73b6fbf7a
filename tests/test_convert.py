"""edgecap.convert (and tools/convert.py): the GGUF pair it writes from the tiny checkpoint
(keys, tensors, values), the checkpoint layouts it accepts, its errors on bad checkpoints, and
that llama.cpp loads the result. Checkpoint tensors are read with safetensors/torch here,
independently of the converter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, TokenType
from safetensors import safe_open
from safetensors.numpy import save_file

import edgecap.convert.converter
from edgecap.convert import convert
from edgecap.convert.converter import OUTTYPES, projector_type_for
from edgecap.engine.gguf_check import (
    check_mmproj,
    check_pair,
    check_text_model,
    mmproj_tensor_names,
    read_header,
    text_tensor_names,
)
from edgecap.engine.hardware import Recommendation, cpu_flags, recommend
from edgecap.errors import ConversionError
from edgecap.tiny import PRESETS, make_checkpoint
from edgecap.tiny.tokenizer import CHAT_TEMPLATE
from tools.convert import main

TINY = PRESETS["tiny"]
REPO = Path(__file__).resolve().parent.parent
WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")


# -- helpers ------------------------------------------------------------------------------------


def load_checkpoint(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint as float32, read through safetensors' torch loader."""
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensors[name] = f.get_tensor(name).float().numpy()
    return tensors


def gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    """The F32/F16 tensors of a GGUF file as float32 arrays in numpy (row-major) shape."""
    header = read_header(path)
    dtypes = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
    data = np.memmap(path, mode="r")
    out = {}
    for name, t in header.tensors.items():
        dtype = np.dtype(dtypes[t.type])
        values = data[t.offset : t.offset + t.nbytes].view(dtype)
        out[name] = values.reshape(t.shape[::-1]).astype(np.float32)
    return out


def expected_gguf(checkpoint: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The GGUF tensors the checkpoint should become, spelled out by hand (not via gguf's map)."""
    text_names = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    vision_names = {
        "ln1": "norm1",
        "ln2": "norm2",
        "attn_out": "attn.proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    out = {
        "token_embd.weight": checkpoint["model.embed_tokens.weight"],
        "output_norm.weight": checkpoint["model.norm.weight"],
        "output.weight": checkpoint["lm_head.weight"],
        "v.post_ln.weight": checkpoint["visual.merger.ln_q.weight"],
    }
    conv = checkpoint["visual.patch_embed.proj.weight"]  # [C, 3, 2, 14, 14]
    out["v.patch_embd.weight"], out["v.patch_embd.weight.1"] = conv[:, :, 0], conv[:, :, 1]
    for kind in ("weight", "bias"):
        for mm in ("0", "2"):
            out[f"mm.{mm}.{kind}"] = checkpoint[f"visual.merger.mlp.{mm}.{kind}"]
    for i in range(TINY.text_layers):
        for gguf_name, hf_name in text_names.items():
            for kind in ("weight", "bias"):
                if (key := f"model.layers.{i}.{hf_name}.{kind}") in checkpoint:
                    out[f"blk.{i}.{gguf_name}.{kind}"] = checkpoint[key]
    for i in range(TINY.vision_blocks):
        for kind in ("weight", "bias"):
            for gguf_name, hf_name in vision_names.items():
                if (key := f"visual.blocks.{i}.{hf_name}.{kind}") in checkpoint:
                    out[f"v.blk.{i}.{gguf_name}.{kind}"] = checkpoint[key]
            q, k, v = np.split(checkpoint[f"visual.blocks.{i}.attn.qkv.{kind}"], 3)
            out |= {f"v.blk.{i}.attn_{p}.{kind}": x for p, x in zip("qkv", (q, k, v), strict=True)}
    return out


def copy_without_weights(src: Path, dst: Path) -> Path:
    """The checkpoint's config and tokenizer files in a new directory, without weights."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if not any(path.match(pattern) for pattern in WEIGHT_FILES):
            shutil.copy(path, dst / path.name)
    return dst


def edit_config(directory: Path, edit: Any) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def newer_layout(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as newer transformers nest it: text_config, rope_parameters."""
    text_keys = [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "vocab_size",
    ]
    text = {key: config.pop(key) for key in text_keys}
    section = config.pop("rope_scaling")["mrope_section"]
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": section}
    config["text_config"] = {"model_type": "qwen2_5_vl_text", **text}
    return config


def newer_name(name: str) -> str:
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model."):
        return "model.language_model." + name.removeprefix("model.")
    return name


# -- the converted tiny model -------------------------------------------------------------------


def test_converted_pair_passes_the_checks_with_every_tensor(tiny_gguf: tuple[Path, Path]) -> None:
    text, mmproj = check_pair(*tiny_gguf)
    assert (text.n_embd, text.n_layer, text.n_head, text.n_head_kv, text.n_ff) == (
        128,
        4,
        4,
        2,
        512,
    )
    assert (text.n_vocab, text.n_ctx_train, text.rope_sections) == (151936, 128000, (4, 6, 6, 0))
    assert text.n_tensors == len(text_tensor_names(4)) == 3 + 12 * 4
    assert text.has_chat_template and text.file_type == 0
    assert (mmproj.projection_dim, mmproj.n_embd, mmproj.n_ff, mmproj.n_layer) == (128, 128, 342, 4)
    assert (mmproj.n_head, mmproj.patch_size, mmproj.image_size, mmproj.n_wa_pattern) == (
        4,
        14,
        560,
        2,
    )
    assert mmproj.n_tensors == len(mmproj_tensor_names(4)) == 2 + 16 * 4 + 5
    assert [p.name for p in tiny_gguf] == ["hf-f32.gguf", "mmproj-hf-f32.gguf"]


def test_text_metadata(tiny_gguf: tuple[Path, Path]) -> None:
    meta = read_header(tiny_gguf[0]).metadata
    expected = {
        "general.architecture": "qwen2vl",
        "general.type": "model",
        "general.name": "hf",
        "general.file_type": 0,
        "qwen2vl.block_count": 4,
        "qwen2vl.context_length": 128000,
        "qwen2vl.embedding_length": 128,
        "qwen2vl.feed_forward_length": 512,
        "qwen2vl.attention.head_count": 4,
        "qwen2vl.attention.head_count_kv": 2,
        "qwen2vl.rope.freq_base": 1000000.0,
        "qwen2vl.rope.dimension_sections": [4, 6, 6, 0],
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": 151936,  # string arrays read as their length
        "tokenizer.ggml.merges": 151387,
        "tokenizer.ggml.bos_token_id": 151643,
        "tokenizer.ggml.eos_token_id": 151645,
        "tokenizer.ggml.padding_token_id": 151643,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    assert {key: meta.get(key) for key in expected} == expected
    assert meta["qwen2vl.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    types = meta["tokenizer.ggml.token_type"]
    assert len(types) == 151936
    assert types[0] == types[151642] == TokenType.NORMAL
    assert types[151643] == types[151645] == types[151655] == TokenType.CONTROL  # <|...|>
    assert types[151657] == types[151658] == TokenType.USER_DEFINED  # <tool_call>, </tool_call>
    assert set(types[151665:]) == {TokenType.UNUSED}  # [PAD151665] ... to vocab_size


def test_mmproj_metadata(tiny_gguf: tuple[Path, Path]) -> None:
    meta = read_header(tiny_gguf[1]).metadata
    expected = {
        "general.architecture": "clip",
        "general.type": "mmproj",
        "clip.has_vision_encoder": True,
        "clip.projector_type": "qwen2.5vl_merger",
        "clip.use_silu": True,
        "clip.vision.projection_dim": 128,
        "clip.vision.image_size": 560,
        "clip.vision.patch_size": 14,
        "clip.vision.embedding_length": 128,
        "clip.vision.feed_forward_length": 342,
        "clip.vision.block_count": 4,
        "clip.vision.attention.head_count": 4,
        "clip.vision.n_wa_pattern": 2,  # fullatt_block_indexes [1, 3]
    }
    assert {key: meta.get(key) for key in expected} == expected
    assert meta["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert meta["clip.vision.image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert meta["clip.vision.image_std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])


def test_f32_values_equal_the_bf16_checkpoint(
    tiny_gguf: tuple[Path, Path], tiny_checkpoint: Path
) -> None:
    expected = expected_gguf(load_checkpoint(tiny_checkpoint))
    written = gguf_tensors(tiny_gguf[0]) | gguf_tensors(tiny_gguf[1])
    assert written.keys() == expected.keys()
    mismatched = [n for n in expected if not np.array_equal(written[n], expected[n])]
    assert mismatched == []


def test_tensor_types_follow_the_output_type(tiny_checkpoint: Path, tmp_path: Path) -> None:
    F32, F16, Q8_0, BF16 = (
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.BF16,
    )
    wanted = {  # outtype: (2-D text weight, vision ffn_down (342 columns), patch kernel)
        "f16": (F16, F16, F16),
        "bf16": (BF16, BF16, F32),
        "q8_0": (Q8_0, F16, F32),
    }
    for outtype, (matrix, ffn_down, patch) in wanted.items():
        out = tmp_path / outtype
        text, mmproj = convert(tiny_checkpoint, out, outtype, progress=False, mmproj_type=outtype)
        assert check_pair(text, mmproj)[0].file_type == {"f16": 1, "bf16": 32, "q8_0": 7}[outtype]
        t, v = read_header(text).tensors, read_header(mmproj).tensors
        assert t["blk.0.attn_q.weight"].type == t["token_embd.weight"].type == matrix
        assert v["v.blk.0.attn_q.weight"].type == matrix
        assert v["v.blk.0.ffn_down.weight"].type == ffn_down
        assert v["v.patch_embd.weight"].type == v["v.patch_embd.weight.1"].type == patch
        one_d = [e.type for e in [*t.values(), *v.values()] if len(e.shape) == 1]
        assert set(one_d) == {F32}
    assert text.name == "hf-Q8_0.gguf" and mmproj.name == "mmproj-hf-Q8_0.gguf"


def test_f16_values_are_the_checkpoint_rounded(
    tiny_checkpoint: Path, tiny_gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    text, mmproj = convert(
        tiny_checkpoint, tmp_path, "f16", name="x", progress=False, mmproj_type="f16"
    )
    f32 = gguf_tensors(tiny_gguf[0]) | gguf_tensors(tiny_gguf[1])
    f16 = gguf_tensors(text) | gguf_tensors(mmproj)
    assert f16.keys() == f32.keys()
    # 2-D weights are rounded to f16; norms and biases stay f32, exact
    want = {n: w.astype(np.float16) if w.ndim > 1 else w for n, w in f32.items()}
    assert [n for n in f32 if not np.array_equal(f16[n], want[n])] == []


# -- checkpoint layouts --------------------------------------------------------------------------


def test_every_layout_converts_to_the_same_tensors(
    tiny_checkpoint: Path, tiny_gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    weights = load_checkpoint(tiny_checkpoint)
    baseline = gguf_tensors(tiny_gguf[0]) | gguf_tensors(tiny_gguf[1])

    # bf16 in shards of at most 10 MB, with an index
    sharded = make_checkpoint(tmp_path / "sharded", "tiny", seed=0, shard_size=10 * 10**6)
    assert len(list(sharded.glob("*.safetensors"))) > 3
    # the same weights as one f32 file
    as_f32 = copy_without_weights(tiny_checkpoint, tmp_path / "f32")
    save_file(weights, as_f32 / "model.safetensors")
    # newer transformers: nested config, model.language_model.* / model.visual.*, f16 weights
    newer = copy_without_weights(tiny_checkpoint, tmp_path / "newer")
    edit_config(newer, newer_layout)
    f16 = {newer_name(n): w.astype(np.float16) for n, w in weights.items()}
    f16["model.visual.rotary_pos_emb.inv_freq"] = np.ones(8, np.float16)  # skipped
    save_file(f16, newer / "model.safetensors")

    for checkpoint in (sharded, as_f32, newer):
        text, mmproj = convert(
            checkpoint, tmp_path / "out" / checkpoint.name, "f32", progress=False
        )
        check_pair(text, mmproj)
        converted = gguf_tensors(text) | gguf_tensors(mmproj)
        assert converted.keys() == baseline.keys()
        # f16 weights are the bf16 values rounded to f16
        want = {n: baseline[n].astype(np.float16) for n in baseline} if checkpoint == newer else {}
        differ = [n for n in baseline if not np.array_equal(converted[n], want.get(n, baseline[n]))]
        assert differ == [], checkpoint.name


def test_tied_embeddings_omit_the_output_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    tied = copy_without_weights(tiny_checkpoint, tmp_path / "tied")
    weights = load_checkpoint(tiny_checkpoint)
    del weights["lm_head.weight"]
    save_file(weights, tied / "model.safetensors")
    text, _ = convert(tied, tmp_path / "out", "f32", progress=False)
    tensors = read_header(text).tensors
    assert "output.weight" not in tensors and "token_embd.weight" in tensors
    assert check_text_model(text).n_tensors == len(text_tensor_names(4, with_output=False))


# -- bad checkpoints -----------------------------------------------------------------------------


def broken_checkpoint(kind: str, tiny: Path, root: Path) -> Path:
    """A copy of the tiny checkpoint (weights linked, not copied) with one thing wrong."""
    broken = copy_without_weights(tiny, root / kind)
    (broken / "model.safetensors").symlink_to(tiny / "model.safetensors")
    vision = "vision_config"
    edits = {
        "qwen2_text": lambda c: c.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2"),
        "llama": lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama"),
        "mrope": lambda c: c["rope_scaling"].update(mrope_section=[4, 6, 8]),
        "uneven": lambda c: c[vision].update(depth=6, fullatt_block_indexes=[1, 3, 4]),
        "all_global": lambda c: c[vision].update(fullatt_block_indexes=[0, 1, 2, 3]),
    }
    if kind in edits:
        edit_config(broken, edits[kind])
    elif kind == "no_config":
        (broken / "config.json").unlink()
    elif kind == "missing_shard":
        (broken / "model.safetensors").unlink()
        index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.st"}}
        (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    elif kind == "truncated":
        (broken / "model.safetensors").unlink()
        data = (tiny / "model.safetensors").read_bytes()
        (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    return broken


BAD_CHECKPOINTS = {
    "no_dir": "is not a directory",
    "no_config": "has no config.json",
    "missing_shard": "names model-00002-of-00002.st, which",
    "truncated": "model.safetensors is truncated: its header describes 82,318,192 bytes",
    "qwen2_text": "describes a Qwen2ForCausalLM model; this converter handles Qwen2.5-VL",
    "llama": "describes a LlamaForCausalLM model",
    "mrope": "mrope_section [4, 6, 8] does not fit the attention heads",
    "uneven": "fullatt_block_indexes [1, 3, 4] are not evenly spaced",
    "all_global": "makes every vision block attend to the whole image",
}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_a_clear_error(
    kind: str, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "nowhere"
    if kind != "no_dir":
        checkpoint = broken_checkpoint(kind, tiny_checkpoint, tmp_path)
    outdir = tmp_path / "out"
    assert main([str(checkpoint), "--outdir", str(outdir), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and BAD_CHECKPOINTS[kind] in err
    assert not outdir.exists() or list(outdir.iterdir()) == []


def test_bad_checkpoint_from_the_command_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = broken_checkpoint("truncated", tiny_checkpoint, tmp_path)
    script = REPO / "tools" / "convert.py"
    run = subprocess.run(
        [sys.executable, str(script), str(checkpoint), "--outdir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert run.returncode == 2
    assert "is truncated" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_unknown_outtype_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="choose one of f32, f16, bf16, q8_0"):
        convert(tiny_checkpoint, tmp_path, "q4_k_m")


def test_the_projector_type_follows_the_cpu_for_16_bit_conversions(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    native = recommend().mmproj_type
    text, mmproj = convert(tiny_checkpoint, tmp_path / "a", "f16", name="m", progress=False)
    assert (text.name, mmproj.name) == ("m-f16.gguf", f"mmproj-m-{native}.gguf")
    assert check_mmproj(mmproj).file_type == OUTTYPES[native].file_type
    # an explicit type wins; f32 and q8_0 conversions keep the projector's type as asked
    _, mmproj = convert(tiny_checkpoint, tmp_path / "b", "bf16", name="m", progress=False,
                        mmproj_type="f16")  # fmt: skip
    assert mmproj.name == "mmproj-m-f16.gguf"
    assert projector_type_for("f32") == "f32" and projector_type_for("q8_0") == "q8_0"


def test_an_unknown_projector_type_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="Unknown mmproj_type 'q4_k_m'"):
        convert(tiny_checkpoint, tmp_path, "f16", mmproj_type="q4_k_m")


# -- outputs --------------------------------------------------------------------------------------


def test_existing_output_is_kept_unless_forced(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(tiny_checkpoint), "--outdir", str(tmp_path), "--name", "m", "--no-progress"]
    args += ["--mmproj-type", "f16"]
    assert main(args) == 0
    written = [str(tmp_path / name) for name in ("m-f16.gguf", "mmproj-m-f16.gguf")]
    assert capsys.readouterr().out.split() == written
    (tmp_path / "mmproj-m-f16.gguf").write_bytes(b"mine")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--force" in err
    assert (tmp_path / "mmproj-m-f16.gguf").read_bytes() == b"mine"
    assert main([*args, "--force"]) == 0
    check_mmproj(tmp_path / "mmproj-m-f16.gguf")


def test_interrupted_conversion_leaves_no_file(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_encode = edgecap.convert.converter.encode

    def encode_then_interrupt(block: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 60:  # in the projector, after the text model was written
            raise KeyboardInterrupt
        return real_encode(block, qtype)

    monkeypatch.setattr(edgecap.convert.converter, "encode", encode_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_checkpoint, tmp_path, "f16", progress=False)
    assert calls == 60
    assert list(tmp_path.iterdir()) == []


# -- llama.cpp ------------------------------------------------------------------------------------


def test_llama_cpp_loads_the_converted_pair(
    tiny_gguf: tuple[Path, Path], tiny_checkpoint: Path
) -> None:
    import llama_cpp
    from llama_cpp import mtmd_cpp
    from tokenizers import Tokenizer

    llm = llama_cpp.Llama(str(tiny_gguf[0]), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    assert llm.n_vocab() == 151936
    reference = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    for text in [
        "<|im_start|>user\nWhat is in the picture?<|im_end|>\n<|im_start|>assistant\n",
        "Grüße, 東京! 12345 tokens\t\n  <tool_call>{}</tool_call>",
    ]:
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=True) == reference.encode(text).ids
        )
    llm.eval(llm.tokenize(b"Hello there", add_bos=False))
    logits = llm.scores[llm.n_tokens - 1]
    assert logits.shape == (151936,) and np.isfinite(logits).all() and logits.std() > 0.1

    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.warmup = False, 2, False
    ctx = mtmd_cpp.mtmd_init_from_file(str(tiny_gguf[1]).encode(), llm.model, params)
    assert ctx
    try:
        assert mtmd_cpp.mtmd_support_vision(ctx)
    finally:
        mtmd_cpp.mtmd_free(ctx)


# -- the CPU's projector type (edgecap.engine.hardware) ---------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),  # Zen 4, Cooper Lake and later
        ({"avx2", "amx_bf16", "amx_int8"}, "bf16"),  # Sapphire Rapids
        ({"fp", "asimd", "bf16"}, "bf16"),  # Arm with the BF16 extension
        ({"avx2", "fma", "f16c"}, "f16"),  # Zen 3, most laptops
        (set(), "f16"),  # unknown CPU
    ],
)
def test_recommendation_by_cpu_flags(flags: set[str], expected: str) -> None:
    got = recommend(frozenset(flags))
    assert isinstance(got, Recommendation) and got.mmproj_type == expected
    assert ("natively" in got.reason) == (expected == "bf16")


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nflags\t\t: fpu AVX2 avx512_bf16\n\nprocessor\t: 1\n")
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
