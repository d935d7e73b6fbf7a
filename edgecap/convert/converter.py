"""Convert a Qwen2.5-VL checkpoint (Hugging Face safetensors) to the two GGUF files llama.cpp runs.

:func:`convert` writes ``<outdir>/<name>-<type>.gguf`` (the text model, architecture qwen2vl)
and ``<outdir>/mmproj-<name>-<type>.gguf`` (the vision projector, projector type
qwen2.5vl_merger). The name defaults to the checkpoint directory's name; the type is f32, f16,
bf16 or Q8_0, as in the published files. For K-quants (Q4_K_M, ...) quantize the result
(:mod:`edgecap.convert.quantizer`). ``tools/convert.py`` is the command line.

The converter streams: tensors are read from the safetensors files in blocks of rows and
written straight to the output, so memory stays far below the size of the largest tensor.
Keys, tensors and dtypes follow docs/qwen25vl-gguf.md.
Both the original tensor names (``model.layers.*``, ``visual.*``) and those saved by newer
transformers (``model.language_model.*``, ``model.visual.*``) are accepted, with flat or nested
(``text_config``/``vision_config``, ``rope_parameters``) configs, sharded or not, in bf16, f16
or f32. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType as QType
from tqdm import tqdm

from edgecap.convert.checkpoint import (
    ModelConfig,
    StoredTensor,
    load_checkpoint_tensors,
    load_config,
    read_json,
)
from edgecap.convert.progress import progress_bar, staged_outputs
from edgecap.engine.gguf_check import mmproj_tensor_names, text_tensor_names
from edgecap.engine.hardware import recommend
from edgecap.errors import ConversionError

# Values are read and converted in blocks of at most this many (64 MB as float32).
CHUNK_VALUES = 1 << 24
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
    """The vocabulary, merges, special ids and chat template.

    See docs/qwen25vl-gguf.md, "Tokenizer metadata".
    """
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
    mmproj_type: str | None = None,
) -> tuple[Path, Path]:
    """Convert ``checkpoint`` into ``(text_gguf, mmproj_gguf)`` in ``outdir``.

    ``mmproj_type`` is the projector's tensor type; None follows :func:`projector_type_for`.

    Both files appear only when both are complete. Raises ConversionError for a checkpoint that
    cannot be converted (the message says why and what to do) or an existing output without
    ``force``.
    """
    checkpoint, outdir = Path(checkpoint), Path(outdir)
    kind = _outtype(outtype, "outtype")
    vision_kind = _outtype(mmproj_type or projector_type_for(outtype), "mmproj_type")
    config = load_config(checkpoint)
    stored = load_checkpoint_tensors(checkpoint)
    text_tensors, _ = plan_tensors(stored, config, kind)
    _, vision_tensors = plan_tensors(stored, config, vision_kind)
    name = name or checkpoint.resolve().name
    text_path = outdir / f"{name}-{kind.label}.gguf"
    mmproj_path = outdir / f"mmproj-{name}-{vision_kind.label}.gguf"
    total = sum(t.source_bytes for t in text_tensors + vision_tensors)
    outdir.mkdir(parents=True, exist_ok=True)
    with (
        staged_outputs([text_path, mmproj_path], force) as (text_partial, mmproj_partial),
        progress_bar(total, f"{name} -> {kind.label}", enabled=progress) as bar,
    ):
        writer = text_writer(config, name, kind)
        add_tokenizer(writer, checkpoint, config.vocab_size)
        write_gguf(text_partial, writer, text_tensors, bar)
        write_gguf(mmproj_partial, mmproj_writer(config, name, vision_kind), vision_tensors, bar)
    return text_path, mmproj_path


def projector_type_for(outtype: str) -> str:
    """The projector's type by default: a 16-bit conversion writes the projector in the 16-bit
    type this CPU computes fastest (bf16 with native bf16 dot products, else f16); f32 and
    q8_0 conversions keep the projector in the same type as the text model."""
    return recommend().mmproj_type if outtype in ("f16", "bf16") else outtype


def _outtype(value: str, parameter: str) -> OutType:
    if value not in OUTTYPES:
        raise ConversionError(
            f"Unknown {parameter} {value!r}; choose one of {', '.join(OUTTYPES)}.",
            parameter=parameter,
        )
    return OUTTYPES[value]
