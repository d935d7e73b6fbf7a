"""Convert a Qwen2.5-VL checkpoint (Hugging Face safetensors) to the two GGUF files llama.cpp runs.

    python tools/convert.py CHECKPOINT_DIR --outdir DIR [--outtype f32|f16|bf16|q8_0]
                            [--name NAME] [--force] [--no-progress]

writes ``DIR/<name>-<type>.gguf`` (the text model, architecture qwen2vl) and
``DIR/mmproj-<name>-<type>.gguf`` (the vision projector, projector type qwen2.5vl_merger).
The name defaults to the checkpoint directory's name; the type is f32, f16, bf16 or Q8_0, as
in the published files. For K-quants (Q4_K_M, ...) run tools/quantize.py on the result.

The converter streams: tensors are read from the safetensors files in blocks of rows and
written straight to the output, so memory stays far below the size of the largest tensor.
Keys, tensors and dtypes follow spec/qwen25vl-gguf.md.
Both the original tensor names (``model.layers.*``, ``visual.*``) and those saved by newer
transformers (``model.language_model.*``, ``model.visual.*``) are accepted, with flat or nested
(``text_config``/``vision_config``, ``rope_parameters``) configs, sharded or not, in bf16, f16
or f32. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import ml_dtypes
import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as QType
from tqdm import tqdm

if __spec__ is None:  # run as a script: make edgecap and tools importable from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecap.errors import ConversionError, EdgecapError
from edgecap.gguf_check import mmproj_tensor_names, text_tensor_names
from tools._progress import progress_bar, staged_outputs

SUPPORTED_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
SUPPORTED_MODEL_TYPE = "qwen2_5_vl"
# Values are read and converted in blocks of at most this many (64 MB as float32).
CHUNK_VALUES = 1 << 24
# Qwen2.5-VL's image normalisation (OpenAI CLIP's), used when preprocessor_config.json is absent.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_SIZE = 560  # recorded for llama.cpp; Qwen2.5-VL resizes dynamically and ignores it


# -- output types -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutType:
    """How one ``--outtype`` stores tensors. Norms, biases and other 1-D tensors are always F32."""

    label: str  # in file names, as in the published files
    file_type: gguf.LlamaFileType
    matrix: QType  # 2-D weights
    patch: QType  # the patch-embedding kernels (llama.cpp keeps them F16 or F32)


OUTTYPES = {
    "f32": OutType("f32", gguf.LlamaFileType.ALL_F32, QType.F32, QType.F32),
    "f16": OutType("f16", gguf.LlamaFileType.MOSTLY_F16, QType.F16, QType.F16),
    "bf16": OutType("bf16", gguf.LlamaFileType.MOSTLY_BF16, QType.BF16, QType.F32),
    "q8_0": OutType("Q8_0", gguf.LlamaFileType.MOSTLY_Q8_0, QType.Q8_0, QType.F32),
}


def tensor_type(gguf_name: str, shape: tuple[int, ...], outtype: OutType) -> QType:
    """The GGUF type of one tensor. Rows that do not split into whole quant blocks (the vision
    ffn_down's 3420 columns) fall back to F16, as llama.cpp's own tools do."""
    if len(shape) == 1:
        return QType.F32
    if gguf_name.startswith("v.patch_embd."):
        return outtype.patch
    block_size, _ = gguf.GGML_QUANT_SIZES[outtype.matrix]
    return outtype.matrix if shape[-1] % block_size == 0 else QType.F16


def tensor_nbytes(shape: tuple[int, ...], qtype: QType) -> int:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block_size * type_size


def encode(block: npt.NDArray[np.float32], qtype: QType) -> np.ndarray:
    """Rows of float32 values in the bytes of ``qtype`` (every type here encodes rows alone)."""
    if qtype == QType.F32:
        return block
    if qtype == QType.F16:
        return block.astype(np.float16)
    return gguf.quants.quantize(block, qtype)


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


# -- which tensor goes where ----------------------------------------------------------------------

# Newer transformers save the text model under model.language_model.* and the vision tower under
# model.visual.*; everything below works on the original names.
NAME_PREFIXES = {"model.language_model.": "model.", "model.visual.": "visual."}


def original_name(name: str) -> str:
    for new, old in NAME_PREFIXES.items():
        if name.startswith(new):
            return old + name[len(new) :]
    return name


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor and where its values come from."""

    name: str
    source: StoredTensor
    shape: tuple[int, ...]
    qtype: QType
    first_row: int = 0  # a row range of the source: the fused qkv is split in thirds
    time_step: int | None = None  # one time step of the Conv3d patch kernel

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.qtype)

    @property
    def source_bytes(self) -> int:
        return math.prod(self.shape) * self.source.dtype.itemsize

    def blocks(self) -> Iterator[npt.NDArray[np.float32]]:
        """The values as float32, in blocks of whole rows."""
        if self.time_step is not None:
            yield self.source.read_rows(0, self.source.rows)[:, :, self.time_step]
            return
        rows = self.shape[0]
        step = max(1, CHUNK_VALUES // max(1, self.source.row_values))
        for start in range(self.first_row, self.first_row + rows, step):
            stop = min(start + step, self.first_row + rows)
            yield self.source.read_rows(start, stop).reshape(-1, *self.shape[1:])


@dataclass(frozen=True)
class Piece:
    """The part of a checkpoint tensor that becomes one GGUF tensor."""

    name: str  # in the original checkpoint layout, as gguf's tensor map knows it
    shape: tuple[int, ...]
    first_row: int = 0
    time_step: int | None = None


def pieces(name: str, stored: StoredTensor) -> list[Piece]:
    """What one checkpoint tensor becomes: itself, or for two tensors, parts of it.

    The vision attention's fused ``qkv`` becomes q, k and v (thirds of its rows); the Conv3d
    patch kernel ``[C, 3, 2, P, P]`` becomes two 2-D kernels, one per time step, the second
    named ``v.patch_embd.weight.1`` in the GGUF file.
    """
    if ".attn.qkv." in name:
        if stored.rows % 3:
            raise ConversionError(f"{name} has {stored.rows} rows, which do not split in three.")
        third = stored.rows // 3
        shape = (third, *stored.shape[1:])
        return [
            Piece(name.replace(".attn.qkv.", f".attn.{part}."), shape, first_row=k * third)
            for k, part in enumerate("qkv")
        ]
    if name == "visual.patch_embed.proj.weight":
        if len(stored.shape) != 5 or stored.shape[2] != 2:
            raise ConversionError(
                f"{name} has shape {list(stored.shape)}; Qwen2.5-VL's is [C, 3, 2, 14, 14]."
            )
        out, channels, _, height, width = stored.shape
        shape = (out, channels, height, width)
        return [Piece(name, shape, time_step=0), Piece(name + ".1", shape, time_step=1)]
    return [Piece(name, stored.shape)]


def gguf_name(
    piece: str, text_map: gguf.TensorNameMap, vision_map: gguf.TensorNameMap
) -> str | None:
    if piece.endswith(".weight.1"):  # the patch kernel's second time step
        first = vision_map.get_name(piece.removesuffix(".1"), try_suffixes=(".weight",))
        return f"{first}.1" if first else None
    tensor_map = vision_map if piece.startswith("visual.") else text_map
    return tensor_map.get_name(piece, try_suffixes=(".weight", ".bias"))


def plan_tensors(
    stored: dict[str, StoredTensor], config: ModelConfig, outtype: OutType
) -> tuple[list[PlannedTensor], list[PlannedTensor]]:
    """The text model's and the projector's tensors, in llama.cpp's order, each checked present."""
    text_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2VL, config.layers)
    # The gguf map numbers merger.mlp.N as if N were a block, so it needs at least 3 "blocks".
    vision_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(config.vision_blocks, 3))
    planned: dict[str, PlannedTensor] = {}
    for checkpoint_name, source in stored.items():
        name = original_name(checkpoint_name)
        if name.endswith(".inv_freq"):
            continue
        for piece in pieces(name, source):
            target = gguf_name(piece.name, text_map, vision_map)
            if target is None:
                raise ConversionError(
                    f"The checkpoint has a tensor {checkpoint_name} that is not part of "
                    "Qwen2.5-VL (or belongs to a layer beyond the config's counts); check that "
                    "config.json and the weights belong together."
                )
            planned[target] = PlannedTensor(
                name=target,
                source=source,
                shape=piece.shape,
                qtype=tensor_type(target, piece.shape, outtype),
                first_row=piece.first_row,
                time_step=piece.time_step,
            )
    with_output = "output.weight" in planned
    text = ordered(planned, text_tensor_names(config.layers, with_output=with_output))
    vision = ordered(planned, mmproj_tensor_names(config.vision_blocks))
    extra = sorted(set(planned) - {t.name for t in text + vision})
    if extra:
        raise ConversionError(
            f"The checkpoint has tensors beyond its config.json's layer counts (GGUF names: "
            f"{', '.join(extra[:5])}); check that config.json and the weights belong together."
        )
    embedding = planned["token_embd.weight"].shape
    if embedding[0] != config.vocab_size:
        raise ConversionError(
            f"The token embedding has {embedding[0]} rows but config.json's vocab_size is "
            f"{config.vocab_size}; check that config.json and the weights belong together."
        )
    return text, vision


def ordered(planned: dict[str, PlannedTensor], names: list[str]) -> list[PlannedTensor]:
    missing = [name for name in names if name not in planned]
    if missing:
        raise ConversionError(
            f"The checkpoint lacks {len(missing)} tensor(s) its config.json calls for (GGUF "
            f"names: {', '.join(missing[:5])}). Is a shard missing or from another model?"
        )
    return [planned[name] for name in names]


# -- metadata -------------------------------------------------------------------------------------


def looks_like_control(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


def add_tokenizer(writer: gguf.GGUFWriter, checkpoint: Path, vocab_size: int) -> None:
    """The vocabulary, merges, special ids and chat template (spec: "Tokenizer metadata")."""
    tokenizer = read_json(checkpoint / "tokenizer.json")
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ConversionError(
            f"{checkpoint / 'tokenizer.json'} does not hold a byte-level BPE vocabulary like "
            "Qwen2.5's; copy tokenizer.json from the original checkpoint."
        )
    tokens: list[str | None] = [None] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    entries = [(i, text, gguf.TokenType.NORMAL) for text, i in model["vocab"].items()]
    for added in tokenizer.get("added_tokens") or []:
        control = added.get("special") or looks_like_control(added["content"])
        kind = gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED
        entries.append((added["id"], added["content"], kind))
    for i, text, kind in entries:
        if not 0 <= i < vocab_size:
            raise ConversionError(
                f"tokenizer.json has token id {i} ({text!r}) but config.json's vocab_size is "
                f"{vocab_size}; check that the tokenizer belongs to this model."
            )
        tokens[i], types[i] = text, kind
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list([t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)])
    writer.add_token_types(types)

    special = gguf.SpecialVocab(checkpoint, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ConversionError(
            f"{checkpoint / 'tokenizer.json'} has no BPE merges; llama.cpp cannot tokenize "
            "without them. Copy tokenizer.json from the original checkpoint."
        )
    if not special.chat_template:
        raise ConversionError(
            f"{checkpoint} has no chat template (tokenizer_config.json 'chat_template', "
            "chat_template.jinja or chat_template.json); copy it from the original checkpoint."
        )
    special.add_special_token.setdefault("bos", False)  # Qwen2.5 prompts start without BOS
    special.add_to_gguf(writer, quiet=True)


def text_writer(config: ModelConfig, name: str, outtype: OutType) -> gguf.GGUFWriter:
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2VL])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(outtype.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(config.layers)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.hidden)
    writer.add_feed_forward_length(config.ffn)
    writer.add_head_count(config.heads)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_sections(list(config.mrope_section))
    return writer


def mmproj_writer(config: ModelConfig, name: str, outtype: OutType) -> gguf.GGUFWriter:
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(outtype.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.QWEN25VL)
    writer.add_vision_use_silu(True)
    writer.add_vision_projection_dim(config.hidden)
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(config.patch_size)
    writer.add_vision_embedding_length(config.vision_hidden)
    writer.add_vision_feed_forward_length(config.vision_ffn)
    writer.add_vision_block_count(config.vision_blocks)
    writer.add_vision_head_count(config.vision_heads)
    # Qwen2.5-VL's vision RMSNorms use the text config's epsilon.
    writer.add_vision_attention_layernorm_eps(config.rms_norm_eps)
    writer.add_vision_image_mean(config.image_mean)
    writer.add_vision_image_std(config.image_std)
    writer.add_vision_n_wa_pattern(config.n_wa_pattern)
    return writer


# -- writing ------------------------------------------------------------------------------------


def write_gguf(
    path: Path, writer: gguf.GGUFWriter, tensors: list[PlannedTensor], bar: tqdm
) -> None:
    """Write header, metadata and tensor index, then each tensor's data as it is converted.

    GGUFWriter's own data path wants whole arrays; here each tensor goes out in row blocks
    through the writer's open file, padded to the alignment its tensor index promised.
    """
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    try:
        for t in tensors:
            writer.write_padding(out, out.tell())
            for block in t.blocks():
                encode(block, t.qtype).tofile(out)
                bar.update(block.size * t.source.dtype.itemsize)
            writer.write_padding(out, t.nbytes)
    finally:
        writer.close()


def convert(
    checkpoint: Path,
    outdir: Path,
    outtype: str = "f16",
    name: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Convert ``checkpoint`` into ``(text_gguf, mmproj_gguf)`` in ``outdir``.

    Both files appear only when both are complete. Raises ConversionError for a checkpoint that
    cannot be converted (the message says why and what to do) or an existing output without
    ``force``.
    """
    checkpoint, outdir = Path(checkpoint), Path(outdir)
    if outtype not in OUTTYPES:
        raise ConversionError(
            f"Unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}.",
            parameter="outtype",
        )
    kind = OUTTYPES[outtype]
    config = load_config(checkpoint)
    text_tensors, vision_tensors = plan_tensors(load_checkpoint_tensors(checkpoint), config, kind)
    name = name or checkpoint.resolve().name
    text_path = outdir / f"{name}-{kind.label}.gguf"
    mmproj_path = outdir / f"mmproj-{name}-{kind.label}.gguf"
    total = sum(t.source_bytes for t in text_tensors + vision_tensors)
    outdir.mkdir(parents=True, exist_ok=True)
    with (
        staged_outputs([text_path, mmproj_path], force) as (text_partial, mmproj_partial),
        progress_bar(total, f"{name} -> {kind.label}", enabled=progress) as bar,
    ):
        writer = text_writer(config, name, kind)
        add_tokenizer(writer, checkpoint, config.vocab_size)
        write_gguf(text_partial, writer, text_tensors, bar)
        write_gguf(mmproj_partial, mmproj_writer(config, name, kind), vision_tensors, bar)
    return text_path, mmproj_path


# -- command line ---------------------------------------------------------------------------------


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
    parser.add_argument("--name", help="model name in file names (default: checkpoint dir name)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        text, mmproj = convert(**vars(args))
    except EdgecapError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; no output file was written", file=sys.stderr)
        return 130
    print(text)
    print(mmproj)
    return 0


if __name__ == "__main__":
    sys.exit(main())
