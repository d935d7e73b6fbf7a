"""The shapes of the synthetic Qwen2.5-VL checkpoints, and their config files.

A :class:`Preset` is the shape of one checkpoint (``tiny`` for tests, ``bench`` with the 7B
widths and few layers, ``7b`` the full release shape); :func:`make_config` is its
``config.json`` in the original release's flat layout. Presets and weight scales:
docs/tiny-model.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from edgecap.errors import InvalidParameter


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
