"""Reading a Qwen2.5-VL checkpoint for the converter: safetensors files in blocks of rows,
single or sharded (with their index), and config.json in its flat or nested
(``text_config``/``vision_config``, ``rope_scaling`` or ``rope_parameters``) layout, checked
so that every problem is a ConversionError that says how to fix it. Nothing here imports torch."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from edgecap.errors import ConversionError

SUPPORTED_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
SUPPORTED_MODEL_TYPE = "qwen2_5_vl"
# Qwen2.5-VL's image normalisation (OpenAI CLIP's), used when preprocessor_config.json is absent.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# -- reading safetensors without torch ----------------------------------------------------------

# The safetensors format is an 8-byte header length, a JSON header (name -> dtype, shape, byte
# range) and the raw data. It is read here with plain file reads, bf16 through ml_dtypes: the
# safetensors package memory-maps whole files, and every page it touches then counts as resident
# memory until the file is closed, while reads of one block of rows keep the process small.
SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
}


@dataclass(frozen=True)
class StoredTensor:
    """One tensor inside a safetensors file."""

    path: Path
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int  # of its first byte, from the start of the file

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_values(self) -> int:
        return math.prod(self.shape[1:])

    def read_rows(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        """Rows ``start:stop`` (along the first axis) as float32."""
        count = (stop - start) * self.row_values
        offset = self.offset + start * self.row_values * self.dtype.itemsize
        data = np.fromfile(self.path, dtype=self.dtype, count=count, offset=offset)
        return data.reshape((stop - start, *self.shape[1:])).astype(np.float32)


def read_safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file; a truncated or malformed file is a ConversionError."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if 8 + header_len > size:
            raise ConversionError(
                f"{path} is truncated or not a safetensors file (its header runs past the end "
                "of the file). Download it again."
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversionError(
                f"{path} has a corrupt header ({exc}). Download it again."
            ) from exc
    data_start = 8 + header_len
    tensors = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ConversionError(
                f"{path}: tensor {name} is stored as {entry['dtype']}; this converter reads "
                "bf16, f16 and f32 checkpoints. Convert from the original (unquantized) release."
            )
        begin, end = entry["data_offsets"]
        tensors[name] = StoredTensor(path, dtype, tuple(entry["shape"]), data_start + begin)
        data_end = max(data_end, data_start + end)
    if data_end > size:
        raise ConversionError(
            f"{path} is truncated: its header describes {data_end:,} bytes but the file has "
            f"{size:,}. Download it again (an interrupted download is the usual cause)."
        )
    return tensors


def load_checkpoint_tensors(checkpoint: Path) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint, single-file or sharded, by its name in the checkpoint."""
    index_path = checkpoint / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map: dict[str, str] = read_json(index_path)["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (checkpoint / "model.safetensors").is_file():
        weight_map, files = {}, ["model.safetensors"]
    else:
        raise ConversionError(
            f"{checkpoint} has neither model.safetensors nor model.safetensors.index.json. "
            "Download the checkpoint's weights into it."
        )
    missing = [name for name in files if not (checkpoint / name).is_file()]
    if missing:
        raise ConversionError(
            f"{index_path.name} names {', '.join(missing)}, which {checkpoint} does not have. "
            "Download the missing shard(s)."
        )
    tensors: dict[str, StoredTensor] = {}
    for name in files:
        tensors.update(read_safetensors_header(checkpoint / name))
    absent = [name for name, file in weight_map.items() if name not in tensors]
    if absent:
        raise ConversionError(
            f"{index_path.name} puts {absent[0]} in {weight_map[absent[0]]}, which does not "
            "hold it. The shards and the index come from different versions; download them again."
        )
    return tensors


# -- config -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """What the GGUF files need from config.json (both layouts) and preprocessor_config.json."""

    vocab_size: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    mrope_section: tuple[int, ...]  # padded with zeros to four numbers
    vision_hidden: int
    vision_ffn: int
    vision_blocks: int
    vision_heads: int
    patch_size: int
    n_wa_pattern: int
    image_mean: list[float]
    image_std: list[float]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing; copy it from the original checkpoint.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc}); download it again.") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path} does not hold a JSON object; download it again.")
    return data


def require(config: dict[str, Any], key: str, where: str = "config.json") -> Any:
    if key not in config or config[key] is None:
        raise ConversionError(f"{where} lacks {key!r}, which every Qwen2.5-VL config has.")
    return config[key]


def check_architecture(config: dict[str, Any]) -> None:
    architectures = config.get("architectures") or []
    if SUPPORTED_ARCHITECTURE in architectures or config.get("model_type") == SUPPORTED_MODEL_TYPE:
        return
    found = ", ".join(architectures) or config.get("model_type") or "unknown"
    raise ConversionError(
        f"config.json describes a {found} model; this converter handles Qwen2.5-VL "
        f"({SUPPORTED_ARCHITECTURE}) only. Text-only and other models are converted with "
        "llama.cpp's convert_hf_to_gguf.py."
    )


def window_pattern(indexes: list[int], depth: int) -> int:
    """``n_wa_pattern`` for llama.cpp from ``fullatt_block_indexes``.

    llama.cpp stores only a period p and lets blocks p-1, 2p-1, ... attend to the whole image,
    so the indexes must be exactly those; and p = 1 (every block global) crashes it.
    """
    if not indexes:
        raise ConversionError(
            "vision_config.fullatt_block_indexes is empty; Qwen2.5-VL lists the vision blocks "
            "that attend to the whole image (e.g. [7, 15, 23, 31])."
        )
    period = indexes[0] + 1
    expected = list(range(period - 1, depth, period))
    if indexes != expected:
        raise ConversionError(
            f"vision_config.fullatt_block_indexes {indexes} are not evenly spaced to the end of "
            f"the {depth} blocks (llama.cpp would use {expected}): llama.cpp stores only the "
            "spacing, so it would run this model differently from its weights."
        )
    if period == 1:
        raise ConversionError(
            "vision_config.fullatt_block_indexes makes every vision block attend to the whole "
            "image; llama.cpp cannot run that (it aborts at the first image). Qwen2.5-VL uses "
            "window attention in all but every n-th block."
        )
    return period


def load_config(checkpoint: Path) -> ModelConfig:
    """Read and validate the checkpoint's configs; errors say what is wrong and how to fix it."""
    if not checkpoint.is_dir():
        raise ConversionError(
            f"{checkpoint} is not a directory; give the folder of a Hugging Face checkpoint "
            "(with config.json and *.safetensors)."
        )
    if not (checkpoint / "config.json").is_file():
        raise ConversionError(
            f"{checkpoint} has no config.json; give the folder of a Hugging Face checkpoint."
        )
    config = read_json(checkpoint / "config.json")
    check_architecture(config)
    text = {**config, **(config.get("text_config") or {})}  # flat (original) or nested
    vision = require(config, "vision_config")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if "mrope_section" not in rope:
        raise ConversionError(
            "config.json has no mrope_section under rope_scaling or rope_parameters; "
            "Qwen2.5-VL's is [16, 24, 24] for the 7B model."
        )
    hidden, heads = require(text, "hidden_size"), require(text, "num_attention_heads")
    head_dim = text.get("head_dim") or hidden // heads
    section = [int(n) for n in rope["mrope_section"]]
    if len(section) > 4 or sum(section) * 2 != head_dim:
        raise ConversionError(
            f"mrope_section {section} does not fit the attention heads: its numbers must add "
            f"up to half the head size ({head_dim} / 2 = {head_dim // 2}). Fix config.json."
        )
    if vision.get("temporal_patch_size", 2) != 2:
        raise ConversionError("vision_config.temporal_patch_size must be 2, as in Qwen2.5-VL.")
    if vision.get("out_hidden_size", hidden) != hidden:
        raise ConversionError(
            f"vision_config.out_hidden_size ({vision['out_hidden_size']}) differs from the text "
            f"hidden_size ({hidden}); the projector would not fit the text model."
        )
    depth = require(vision, "depth", "vision_config")
    fullatt = require(vision, "fullatt_block_indexes", "vision_config")
    preprocessor_path = checkpoint / "preprocessor_config.json"
    preprocessor = read_json(preprocessor_path) if preprocessor_path.is_file() else {}
    return ModelConfig(
        vocab_size=require(text, "vocab_size"),
        hidden=hidden,
        ffn=require(text, "intermediate_size"),
        layers=require(text, "num_hidden_layers"),
        heads=heads,
        kv_heads=text.get("num_key_value_heads") or heads,
        context_length=text.get("max_position_embeddings") or 128000,
        rope_theta=float(text.get("rope_theta") or rope.get("rope_theta") or 1000000.0),
        rms_norm_eps=float(text.get("rms_norm_eps") or 1e-6),
        mrope_section=(*section, 0, 0, 0, 0)[:4],
        vision_hidden=require(vision, "hidden_size", "vision_config"),
        vision_ffn=require(vision, "intermediate_size", "vision_config"),
        vision_blocks=depth,
        vision_heads=require(vision, "num_heads", "vision_config"),
        patch_size=vision.get("patch_size", 14),
        n_wa_pattern=window_pattern(fullatt, depth),
        image_mean=[float(v) for v in preprocessor.get("image_mean", CLIP_MEAN)],
        image_std=[float(v) for v in preprocessor.get("image_std", CLIP_STD)],
    )
