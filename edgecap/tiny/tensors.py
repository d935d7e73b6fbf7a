"""The tensors of a synthetic checkpoint: their names, shapes and scales, and their values.

Every tensor has its own random stream, seeded from the seed and the tensor name, so the same
seed gives the same values whatever order tensors are made in, one at a time.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from edgecap.tiny.presets import Preset
from edgecap.tiny.tokenizer import VOCAB_END

BF16 = np.dtype(ml_dtypes.bfloat16)
# Random numbers are drawn in blocks of rows of at most this many values, so the float32
# scratch space stays small even for the 7B embedding (545M values).
CHUNK_VALUES = 1 << 24


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
