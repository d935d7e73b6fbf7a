"""Check GGUF files before llama.cpp sees them.

llama.cpp aborts the whole process on some bad inputs (a projector whose every vision block
attends globally, for one), and on others it fails with messages that do not say what to do.
These checks read only the header (metadata and tensor index), so they take a fraction of a
second even on multi-GB files. Every failure is a ``ModelError`` whose message says how to fix
it. The expected tensor names live here too, so that tools/convert.py writes exactly what these
checks (and llama.cpp) expect.

References: docs/qwen25vl-gguf.md, llama.cpp ``src/models/qwen2vl.cpp`` and
``tools/mtmd/clip.cpp`` (load_hparams, load_tensors).
"""

from __future__ import annotations

import functools
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
)

from edgecap.errors import ModelError

TEXT_ARCH = "qwen2vl"
MMPROJ_ARCH = "clip"
PROJECTOR_TYPE = "qwen2.5vl_merger"
GGUF_MAGIC = b"GGUF"

RECONVERT = "Convert the Hugging Face checkpoint again with tools/convert.py."


# -- the tensors each file must hold ------------------------------------------------------------


def text_tensor_names(n_layer: int, *, with_output: bool = True) -> list[str]:
    """The tensors llama.cpp loads for a qwen2vl text model with ``n_layer`` blocks.

    ``output.weight`` (the LM head) is optional: without it llama.cpp reuses ``token_embd``.
    """
    names = ["token_embd.weight", "output_norm.weight"]
    if with_output:
        names.append("output.weight")
    for i in range(n_layer):
        names += [
            f"blk.{i}.attn_norm.weight",
            *(f"blk.{i}.attn_{p}.{kind}" for p in "qkv" for kind in ("weight", "bias")),
            f"blk.{i}.attn_output.weight",
            f"blk.{i}.ffn_norm.weight",
            *(f"blk.{i}.ffn_{p}.weight" for p in ("gate", "up", "down")),
        ]
    return names


def mmproj_tensor_names(n_block: int) -> list[str]:
    """The tensors of a Qwen2.5-VL vision projector with ``n_block`` vision blocks."""
    names = ["v.patch_embd.weight", "v.patch_embd.weight.1"]
    for i in range(n_block):
        names += [f"v.blk.{i}.ln1.weight", f"v.blk.{i}.ln2.weight"]
        for layer in ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down"):
            names += [f"v.blk.{i}.{layer}.weight", f"v.blk.{i}.{layer}.bias"]
    names += ["v.post_ln.weight", "mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"]
    return names


# -- what the checks return ---------------------------------------------------------------------


@dataclass(frozen=True)
class TextModelInfo:
    """The facts about a text GGUF that the engine and the tools use."""

    path: Path
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int
    n_vocab: int
    rope_sections: tuple[int, int, int, int]
    file_type: int | None  # general.file_type (llama_ftype), when recorded
    n_tensors: int
    has_chat_template: bool


@dataclass(frozen=True)
class MmprojInfo:
    """The facts about a vision projector GGUF."""

    path: Path
    projector_type: str
    projection_dim: int  # must equal the text model's n_embd
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    patch_size: int
    image_size: int
    n_wa_pattern: int  # every n-th vision block attends to the whole image
    file_type: int | None
    n_tensors: int


# -- reading ------------------------------------------------------------------------------------

# The gguf package's GGUFReader turns every vocabulary entry and merge into numpy arrays: 6 s
# for Qwen2.5's 152k tokens and 151k merges. Checks need only the header's numbers, so it is
# parsed here (GGUF v2/v3: magic, version, counts, key/values, tensor index), skipping string
# arrays: 0.04-0.06 s for a Qwen2.5-VL text model. Integer widths are not checked (llama.cpp
# refuses an i32 where it wants a u32, with a clear message); tools/convert.py writes its types.
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}


@dataclass(frozen=True)
class TensorEntry:
    """One entry of a GGUF tensor index."""

    name: str
    shape: tuple[int, ...]  # ggml order: the row length first
    type: GGMLQuantizationType
    offset: int  # absolute, in the file
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """The metadata and tensor index of a GGUF file.

    Metadata values are Python scalars, strings or lists; a string array (the vocabulary, the
    merges) is represented by its length only.
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorEntry]

    @property
    def architecture(self) -> str:
        value = self.metadata.get(Keys.General.ARCHITECTURE)
        return value if isinstance(value, str) else ""


class _Cursor:
    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer, self.pos = buffer, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        if self.pos + length > len(self.buffer):
            raise ValueError("a string runs past the end of the file")
        text = self.buffer[self.pos : self.pos + length].decode("utf-8", errors="replace")
        self.pos += length
        return text

    def value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype != GGUFValueType.ARRAY:
            return self.scalar(_SCALAR_FORMATS[vtype])
        item_type, count = GGUFValueType(self.scalar("<I")), self.scalar("<Q")
        if item_type == GGUFValueType.STRING:
            for _ in range(count):
                self.pos += 8 + struct.unpack_from("<Q", self.buffer, self.pos)[0]
            return count
        if item_type == GGUFValueType.ARRAY:
            raise ValueError("nested arrays are not supported")
        fmt = _SCALAR_FORMATS[item_type]
        values = struct.unpack_from(f"<{count}{fmt[1]}", self.buffer, self.pos)
        self.pos += count * struct.calcsize(fmt)
        return list(values)


def _parse_header(path: Path, buffer: mmap.mmap) -> GGUFHeader:
    cursor = _Cursor(buffer)
    cursor.pos = 4  # past the magic
    version = cursor.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = cursor.string()
        metadata[key] = cursor.value(GGUFValueType(cursor.scalar("<I")))
    index = []
    for _ in range(n_tensors):
        name = cursor.string()
        n_dims = cursor.scalar("<I")
        shape = tuple(cursor.scalar("<Q") for _ in range(n_dims))
        index.append((name, shape, GGMLQuantizationType(cursor.scalar("<I")), cursor.scalar("<Q")))
    alignment = metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = {}
    for name, shape, qtype, offset in index:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        nbytes = math.prod(shape) // block_size * type_size
        tensors[name] = TensorEntry(name, shape, qtype, data_start + offset, nbytes)
    return GGUFHeader(path, metadata, tensors)


def read_header(path: Path, role: str = "model file") -> GGUFHeader:
    """The header of the GGUF file at ``path``; a missing, foreign, corrupt or truncated file
    is a ModelError. ``role`` names the file in messages ("text model", "projector").

    An engine load reads the text model's header several times (checks, the weight-layout
    choice, the page release); while the file's size and mtime are unchanged it is parsed once.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"The {role} {path} does not exist; check the path.", parameter="model")
    stat = path.stat()
    return _read_header(path, role, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_header(path: Path, role: str, size: int, _mtime_ns: int) -> GGUFHeader:
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelError(
                f"The {role} {path} is not a GGUF file (it does not start with 'GGUF'). Give "
                "the path of a .gguf file; a Hugging Face checkpoint must be converted first "
                "with tools/convert.py.",
                parameter="model",
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            try:
                header = _parse_header(path, buffer)
            except (struct.error, ValueError, KeyError, OverflowError) as exc:
                raise ModelError(
                    f"The {role} {path} is truncated or corrupt ({exc}). Download or convert "
                    "it again; an interrupted copy is the usual cause.",
                    parameter="model",
                ) from exc
    end = max((t.offset + t.nbytes for t in header.tensors.values()), default=0)
    if end > size:
        raise ModelError(
            f"The {role} {path} is truncated: its tensors need {end:,} bytes but the file has "
            f"{size:,}. Download or convert it again.",
            parameter="model",
        )
    return header


def _require(header: GGUFHeader, key: str, kind: type) -> Any:
    value = header.metadata.get(key)
    if value is None:
        raise ModelError(
            f"{header.path} lacks the metadata key {key!r}, which llama.cpp needs. It was "
            f"written by an older or different converter. {RECONVERT}",
            parameter="model",
        )
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelError(
            f"{header.path} has a malformed {key!r} ({value!r}). {RECONVERT}", parameter="model"
        )
    return value


def _check_tensors(header: GGUFHeader, expected: list[str]) -> None:
    missing = [name for name in expected if name not in header.tensors]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ModelError(
            f"{header.path} lacks tensors llama.cpp needs: {', '.join(missing[:5])}{more}. "
            f"{RECONVERT}",
            parameter="model",
        )


# -- the checks ---------------------------------------------------------------------------------


def check_text_model(path: Path) -> TextModelInfo:
    """Validate a Qwen2.5-VL text GGUF (architecture qwen2vl) and return its facts."""
    header = read_header(path, "text model")
    path, meta, arch = header.path, header.metadata, header.architecture
    if arch == MMPROJ_ARCH:
        raise ModelError(
            f"{path} is a vision projector (mmproj), not a text model. Pass it as the projector "
            "and give the text model's GGUF as the model.",
            parameter="model",
        )
    if arch != TEXT_ARCH:
        raise ModelError(
            f"{path} is a {arch or 'unknown'!r} model; edgecap runs Qwen2.5-VL, whose text GGUF "
            f"has architecture {TEXT_ARCH!r}. {RECONVERT}",
            parameter="model",
        )

    def key(template: str) -> str:
        return template.format(arch=TEXT_ARCH)

    n_embd = _require(header, key(Keys.LLM.EMBEDDING_LENGTH), int)
    n_head = _require(header, key(Keys.Attention.HEAD_COUNT), int)
    head_dim = meta.get(key(Keys.Attention.KEY_LENGTH)) or n_embd // max(n_head, 1)
    sections = _require(header, key(Keys.Rope.DIMENSION_SECTIONS), list)
    if len(sections) != 4 or sum(sections) * 2 != head_dim:
        raise ModelError(
            f"{path} has M-RoPE sections {sections}; llama.cpp needs 4 numbers that add up to "
            f"half the head size ({head_dim // 2}). {RECONVERT}",
            parameter="model",
        )
    n_vocab = _require(header, Keys.Tokenizer.LIST, int)
    n_layer = _require(header, key(Keys.LLM.BLOCK_COUNT), int)
    with_output = "output.weight" in header.tensors
    _check_tensors(header, text_tensor_names(n_layer, with_output=with_output))
    embedding = header.tensors["token_embd.weight"].shape
    if embedding != (n_embd, n_vocab):
        raise ModelError(
            f"{path} has a vocabulary of {n_vocab} tokens but its token embedding has shape "
            f"{list(embedding)} (expected [{n_embd}, {n_vocab}]). {RECONVERT}",
            parameter="model",
        )
    return TextModelInfo(
        path=path,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=meta.get(key(Keys.Attention.HEAD_COUNT_KV)) or n_head,
        n_ff=_require(header, key(Keys.LLM.FEED_FORWARD_LENGTH), int),
        n_ctx_train=_require(header, key(Keys.LLM.CONTEXT_LENGTH), int),
        n_vocab=n_vocab,
        rope_sections=(sections[0], sections[1], sections[2], sections[3]),
        file_type=meta.get(Keys.General.FILE_TYPE),
        n_tensors=len(header.tensors),
        has_chat_template=bool(meta.get(Keys.Tokenizer.CHAT_TEMPLATE)),
    )


def check_mmproj(path: Path) -> MmprojInfo:
    """Validate a Qwen2.5-VL vision projector GGUF (architecture clip) and return its facts."""
    header = read_header(path, "projector")
    path, meta, arch = header.path, header.metadata, header.architecture
    if arch == TEXT_ARCH:
        raise ModelError(
            f"{path} is a text model, not a vision projector. Give the mmproj-*.gguf file that "
            "came with it as the projector.",
            parameter="model",
        )
    if arch != MMPROJ_ARCH:
        raise ModelError(
            f"{path} is a {arch or 'unknown'!r} file, not a vision projector (architecture "
            f"{MMPROJ_ARCH!r}). Give the mmproj-*.gguf file of a Qwen2.5-VL model.",
            parameter="model",
        )
    if meta.get(Keys.Clip.HAS_VISION_ENCODER) is not True:
        raise ModelError(
            f"{path} has no vision encoder (clip.has_vision_encoder is not true), so llama.cpp "
            f"would not read images with it. {RECONVERT}",
            parameter="model",
        )
    projector = meta.get(Keys.Clip.PROJECTOR_TYPE)
    if projector != PROJECTOR_TYPE:
        raise ModelError(
            f"{path} is a {projector!r} projector; edgecap runs Qwen2.5-VL, whose projector type "
            f"is {PROJECTOR_TYPE!r}. Use the mmproj file of a Qwen2.5-VL model.",
            parameter="model",
        )
    vision = Keys.ClipVision
    n_layer = _require(header, vision.BLOCK_COUNT, int)
    n_wa_pattern = _require(header, vision.N_WA_PATTERN, int)
    if n_wa_pattern == 1:
        # llama.cpp then builds no window mask and aborts the process at the first image.
        raise ModelError(
            f"{path} makes every vision block attend to the whole image "
            "(clip.vision.n_wa_pattern = 1), which this llama.cpp cannot run: it would crash at "
            "the first image. Qwen2.5-VL attends globally in every n-th block only (n = 8 for "
            "the released models); check fullatt_block_indexes in the checkpoint's config.json "
            "and convert it again.",
            parameter="model",
        )
    for key in (vision.IMAGE_MEAN, vision.IMAGE_STD):
        if len(_require(header, key, list)) < 3:
            raise ModelError(
                f"{path} has fewer than 3 values in {key!r}. {RECONVERT}", parameter="model"
            )
    _require(header, vision.Attention.LAYERNORM_EPS, float)
    _check_tensors(header, mmproj_tensor_names(n_layer))
    return MmprojInfo(
        path=path,
        projector_type=projector,
        projection_dim=_require(header, vision.PROJECTION_DIM, int),
        n_embd=_require(header, vision.EMBEDDING_LENGTH, int),
        n_layer=n_layer,
        n_head=_require(header, vision.Attention.HEAD_COUNT, int),
        n_ff=_require(header, vision.FEED_FORWARD_LENGTH, int),
        patch_size=_require(header, vision.PATCH_SIZE, int),
        image_size=_require(header, vision.IMAGE_SIZE, int),
        n_wa_pattern=n_wa_pattern,
        file_type=meta.get(Keys.General.FILE_TYPE),
        n_tensors=len(header.tensors),
    )


def check_pair(text: Path, mmproj: Path) -> tuple[TextModelInfo, MmprojInfo]:
    """Validate both files and that the projector feeds this text model."""
    text_info = check_text_model(text)
    mmproj_info = check_mmproj(mmproj)
    if mmproj_info.projection_dim != text_info.n_embd:
        raise ModelError(
            f"The projector {mmproj} belongs to a model with hidden size "
            f"{mmproj_info.projection_dim}, but the text model {text} has hidden size "
            f"{text_info.n_embd}. Use the mmproj file released with this text model.",
            parameter="model",
        )
    return text_info, mmproj_info
