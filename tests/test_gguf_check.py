"""edgecap.engine.gguf_check: the header reader (against the gguf package's reader), and each
check on small synthetic GGUF files with one thing wrong, plus truncated and foreign files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from edgecap.engine.gguf_check import (
    check_mmproj,
    check_pair,
    check_text_model,
    mmproj_tensor_names,
    read_header,
    text_tensor_names,
)
from edgecap.errors import ModelError

N_EMBD, N_VOCAB = 8, 16
TEXT_META: dict[str, Any] = {
    "qwen2vl.block_count": 2,
    "qwen2vl.context_length": 4096,
    "qwen2vl.embedding_length": N_EMBD,
    "qwen2vl.feed_forward_length": 16,
    "qwen2vl.attention.head_count": 2,
    "qwen2vl.attention.head_count_kv": 1,
    "qwen2vl.rope.dimension_sections": [1, 1, 0, 0],  # head_dim 4
    "tokenizer.ggml.tokens": [chr(ord("a") + i) for i in range(N_VOCAB)],
    "tokenizer.chat_template": "{{ messages }}",
}
MMPROJ_META: dict[str, Any] = {
    "clip.has_vision_encoder": True,
    "clip.projector_type": "qwen2.5vl_merger",
    "clip.vision.projection_dim": N_EMBD,
    "clip.vision.embedding_length": 4,
    "clip.vision.feed_forward_length": 6,
    "clip.vision.block_count": 2,
    "clip.vision.attention.head_count": 2,
    "clip.vision.attention.layer_norm_epsilon": 1e-6,
    "clip.vision.patch_size": 14,
    "clip.vision.image_size": 560,
    "clip.vision.image_mean": [0.5, 0.5, 0.5],
    "clip.vision.image_std": [0.25, 0.25, 0.25],
    "clip.vision.n_wa_pattern": 2,
}


def write_gguf(
    path: Path, arch: str, metadata: dict[str, Any], tensors: dict[str, tuple[int, ...]]
) -> Path:
    """A GGUF file with these keys (``None`` values left out) and zero-filled tensors."""
    writer = GGUFWriter(path, arch)
    for key, value in metadata.items():
        if value is not None:
            writer.add_key_value(key, value, GGUFValueType.get_type(value))
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def text_file(
    path: Path, *, arch: str = "qwen2vl", drop: str = "", embd_rows: int = N_VOCAB, **meta: Any
) -> Path:
    tensors = {name: (2,) for name in text_tensor_names(2) if name != drop}
    tensors["token_embd.weight"] = (embd_rows, N_EMBD)  # numpy order: ggml's [n_embd, n_vocab]
    return write_gguf(path, arch, {**TEXT_META, **meta}, tensors)


def mmproj_file(path: Path, *, drop: str = "", **meta: Any) -> Path:
    tensors = {name: (2,) for name in mmproj_tensor_names(2) if name != drop}
    return write_gguf(path, "clip", {**MMPROJ_META, **meta}, tensors)


def is_string_array(types: list[GGUFValueType]) -> bool:
    return types[0] == GGUFValueType.ARRAY and types[-1] == GGUFValueType.STRING


# -- the header reader --------------------------------------------------------------------------


def test_header_matches_the_gguf_package_reader(
    tiny_gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    # The tiny text model takes GGUFReader seconds (152k tokens); the synthetic one has them all.
    for path in (tiny_gguf[1], text_file(tmp_path / "text.gguf")):
        ours, reference = read_header(path), GGUFReader(path)
        fields = {
            name: len(field.data) if is_string_array(field.types) else field.contents()
            for name, field in reference.fields.items()
            if not name.startswith("GGUF.")  # the reader's own entries for the file header
        }
        assert ours.metadata == fields
        assert {
            name: (t.shape, t.type, t.offset, t.nbytes) for name, t in ours.tensors.items()
        } == {
            t.name: (tuple(int(d) for d in t.shape), t.tensor_type, t.data_offset, t.n_bytes)
            for t in reference.tensors
        }


def test_synthetic_files_pass(tmp_path: Path) -> None:
    text, mmproj = check_pair(text_file(tmp_path / "t.gguf"), mmproj_file(tmp_path / "m.gguf"))
    assert (text.n_embd, text.n_vocab, text.n_layer, text.rope_sections) == (8, 16, 2, (1, 1, 0, 0))
    assert (mmproj.projection_dim, mmproj.n_layer, mmproj.n_wa_pattern) == (8, 2, 2)


# -- text model ---------------------------------------------------------------------------------

TEXT_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "other_arch": ({"arch": "llama"}, "is a 'llama' model; edgecap runs Qwen2.5-VL"),
    "no_sections": (
        {"qwen2vl.rope.dimension_sections": None},
        "lacks the metadata key 'qwen2vl.rope.dimension_sections'",
    ),
    "bad_sections": (
        {"qwen2vl.rope.dimension_sections": [1, 1, 1, 0]},
        "has M-RoPE sections [1, 1, 1, 0]; llama.cpp needs 4 numbers that add up to half the "
        "head size (2)",
    ),
    "three_sections": ({"qwen2vl.rope.dimension_sections": [1, 1, 0]}, "M-RoPE sections [1, 1, 0]"),
    "malformed": ({"qwen2vl.block_count": "two"}, "has a malformed 'qwen2vl.block_count' ('two')"),
    "missing_tensor": (
        {"drop": "blk.1.ffn_up.weight"},
        "lacks tensors llama.cpp needs: blk.1.ffn_up.weight.",
    ),
    "embedding_shape": (
        {"embd_rows": 15},
        "has a vocabulary of 16 tokens but its token embedding has shape [8, 15]",
    ),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_bad_text_model(case: str, tmp_path: Path) -> None:
    changes, message = TEXT_CASES[case]
    path = text_file(tmp_path / "t.gguf", **changes)
    with pytest.raises(ModelError) as raised:
        check_text_model(path)
    assert message in raised.value.message
    assert raised.value.parameter == "model"


def test_projector_given_as_text_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"is a vision projector \(mmproj\), not a text model"):
        check_text_model(mmproj_file(tmp_path / "m.gguf"))


# -- projector ----------------------------------------------------------------------------------

MMPROJ_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "all_global": (
        {"clip.vision.n_wa_pattern": 1},
        "makes every vision block attend to the whole image (clip.vision.n_wa_pattern = 1)",
    ),
    "no_pattern": (
        {"clip.vision.n_wa_pattern": None},
        "lacks the metadata key 'clip.vision.n_wa_pattern'",
    ),
    "qwen2vl": (
        {"clip.projector_type": "qwen2vl_merger"},
        "is a 'qwen2vl_merger' projector; edgecap runs Qwen2.5-VL",
    ),
    "no_vision": ({"clip.has_vision_encoder": False}, "has no vision encoder"),
    "short_mean": ({"clip.vision.image_mean": [0.5, 0.5]}, "fewer than 3 values"),
    "missing_tensor": ({"drop": "mm.2.bias"}, "lacks tensors llama.cpp needs: mm.2.bias."),
}


@pytest.mark.parametrize("case", list(MMPROJ_CASES))
def test_bad_mmproj(case: str, tmp_path: Path) -> None:
    changes, message = MMPROJ_CASES[case]
    with pytest.raises(ModelError) as raised:
        check_mmproj(mmproj_file(tmp_path / "m.gguf", **changes))
    assert message in raised.value.message


def test_text_model_given_as_projector(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a text model, not a vision projector"):
        check_mmproj(text_file(tmp_path / "t.gguf"))


def test_projector_of_another_model(tmp_path: Path) -> None:
    text = text_file(tmp_path / "t.gguf")
    mmproj = mmproj_file(tmp_path / "m.gguf", **{"clip.vision.projection_dim": 3584})
    with pytest.raises(ModelError) as raised:
        check_pair(text, mmproj)
    assert raised.value.message == (
        f"The projector {mmproj} belongs to a model with hidden size 3584, but the text model "
        f"{text} has hidden size 8. Use the mmproj file released with this text model."
    )


# -- files --------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist; check the path"):
        check_text_model(tmp_path / "nothing.gguf")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ModelError, match=r"is not a GGUF file .* converted first"):
        check_mmproj(path)


def test_truncated_data(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    data = tiny_gguf[1].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=f"need {len(data):,} bytes but the file has"):
        check_mmproj(path)


@pytest.mark.parametrize("keep", [4, 24, 200, 2000])
def test_truncated_header(keep: int, tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    with tiny_gguf[0].open("rb") as f:
        path.write_bytes(f.read(keep))
    with pytest.raises(ModelError, match="is truncated or corrupt"):
        check_text_model(path)


def test_unsupported_version(tiny_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "v1.gguf"
    shutil.copy(tiny_gguf[1], path)
    with path.open("r+b") as f:
        f.seek(4)
        f.write((1).to_bytes(4, "little"))
    with pytest.raises(ModelError, match="GGUF version 1 is not supported"):
        check_mmproj(path)
