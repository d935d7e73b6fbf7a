"""Tokenizer parity: llama.cpp's tokenizer, read from our converted GGUF, against Hugging Face
``tokenizers`` on the checkpoint's ``tokenizer.json`` (the real Qwen2.5 vocabulary and merges).

edgecap tokenizes as ``Engine.tokenize`` does: NFC-normalise (Qwen2.5's tokenizer.json does;
llama.cpp's BPE tokenizer does not normalise at all), then ``llama_tokenize`` with
``parse_special`` on and no BOS. The raw llama.cpp tokenizer is also loaded vocab-only, to check
detokenization and the vocabulary itself.

Known defect: llama.cpp (llama-vocab.cpp, a hard-coded list of end-of-generation texts added for
PaddleOCR) turns Qwen's ordinary BPE token ``</s>`` (id 128247) into a control token that also
ends generation. Text containing ``</s>`` then becomes that one control token where the reference
has ``</``, ``s``, ``>``. ``test_slash_s_is_a_known_llama_cpp_difference`` pins that behaviour
(it fails once upstream fixes it), and ``test_token_kinds_match_reference`` shows it is the only
such token.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest
import tokenizers
from llama_cpp._internals import LlamaModel

from edgecap.config import Settings
from edgecap.engine.engine import Engine
from edgecap.records import ModelFiles
from edgecap.tiny.tokenizer import bytes_to_unicode

# llama_token_attr bits (llama.h)
ATTR_NORMAL, ATTR_CONTROL, ATTR_USER_DEFINED = 1 << 2, 1 << 3, 1 << 4

PYTHON_CODE = '''\
import os

def main(argv: list[str]) -> int:
    """Print each argument."""
    for i, arg in enumerate(argv):
        if arg != "--":  # skip
            print(f"{i:>3}: {arg!r}")
    return 0 if argv else -1
'''
JSON_CODE = '{"caption": "A cat", "tags": ["cat", "sofa"], "score": 0.93, "ok": true, "n": null}'
HTML_CODE = (
    '<!DOCTYPE html>\n<html lang="en">\n  <body>\n    <a href="/x?a=1&amp;b=2">Link</a>'
    "<br/>\n    <!-- comment -->\n  </body>\n</html>"
)

# (test id, text). Ids are ASCII so `pytest -k` can pick one.
CASES: list[tuple[str, str]] = [
    # -- trivial
    ("empty", ""),
    ("single-char", "a"),
    ("hello", "Hello, world!"),
    ("sentence", "A brown dog runs across a grassy field at sunset."),
    # -- special and added tokens
    ("chatml", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"),
    ("vision-block", "<|vision_start|><|image_pad|><|vision_end|>Describe this image."),
    ("image-pad-run", "<|image_pad|>" * 8),
    ("endoftext", "The end.<|endoftext|>"),
    ("special-glued", "abc<|im_end|>def<|im_start|>ghi"),
    ("special-spaced", " <|im_start|> user <|im_end|> "),
    ("special-newlines", "\n<|im_end|>\n\n<|im_start|>assistant\n"),
    ("tool-call", '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'),
    ("fim", "<|fim_prefix|>def f(<|fim_suffix|>)<|fim_middle|>"),
    ("fake-special", "<|not_a_token|> <s> [INST] <<SYS>> <|im_start"),
    ("slash-s-tag", "Strike <s>this</s> out."),
    ("marker-text", "<__media__> and <image>"),
    # -- CJK and other scripts
    ("chinese", "一只猫坐在窗台上，看着外面的雨。"),
    ("chinese-mixed", "数字 12345 和 emoji 🎉 in one line"),
    ("japanese", "吾輩は猫である。名前はまだ無い。カタカナとひらがな"),
    ("korean", "고양이가 창문 옆에 앉아 있습니다."),
    ("arabic", "القطة تجلس على النافذة"),
    ("hebrew", "החתול יושב על החלון"),
    ("bidi-mixed", "Price: 100 ₪ (מחיר) and ١٢٣ درهم"),
    ("russian", "Кошка сидит на подоконнике. ЁЖИК ёжик"),
    ("greek", "Η γάτα κάθεται στο παράθυρο"),
    ("hindi", "बिल्ली खिड़की पर बैठी है"),
    ("thai", "แมวนั่งอยู่บนขอบหน้าต่าง"),
    ("vietnamese", "Con mèo ngồi trên bậu cửa sổ. Tiếng Việt"),
    # -- emoji
    ("emoji", "I love it 😀😂🥲🤖"),
    ("emoji-zwj-family", "👨‍👩‍👧‍👦 family"),
    ("emoji-skin-tones", "👍🏻👍🏼👍🏽👍🏾👍🏿 👋🏽"),
    ("emoji-zwj-mixed", "🏳️‍🌈 🧑🏽‍💻 👩‍❤️‍💋‍👨"),
    ("emoji-flags-keycaps", "🇯🇵🇺🇸🇩🇪 1️⃣#️⃣ ❤️"),
    # -- digits (Qwen splits \p{N} one by one)
    ("digits-long", "1234567890123456789012345678901234567890"),
    ("numbers-mixed", "3.14159, -42, 1e-9, 0x1F, v2.0.1, 2024-05-01 12:34:56"),
    ("digits-other", "² ³ ½ Ⅻ ١٢٣ ١٢٣٤ ৪২ 一二三"),
    ("money", "$1,234,567.89 €99 ¥5000"),
    # -- whitespace
    ("spaces-run", "a    b     c"),
    ("tabs", "col1\tcol2\t\tcol3\t"),
    ("newlines-3", "para one\n\n\npara two"),
    ("crlf", "line one\r\nline two\r\n\r\nline three"),
    ("trailing-spaces", "ends with spaces   "),
    ("leading-spaces", "   starts with spaces"),
    ("only-spaces", "     "),
    ("only-newlines", "\n\n\n\n"),
    ("mixed-whitespace", " \t \n \r\n\t  x  \n "),
    ("unicode-spaces", "a\u00a0b\u2009c\u3000d\u2028e"),
    # -- code
    ("python", PYTHON_CODE),
    ("json", JSON_CODE),
    ("html", HTML_CODE),
    ("cpp", "std::vector<int> v{1, 2}; if (a != b && c->d >= 0) { x <<= 2; }"),
    ("markdown", "# Title\n\n- **bold** _it_ `code`\n\n```python\nx = 1\n```\n> quote"),
    ("punctuation-runs", "Wait... what?!?! -- (yes) [no] {maybe} ;;; ::: ___ ***"),
    # -- contractions
    ("contractions", "it's don't they're we've I'm you'll she'd"),
    ("contractions-upper", "IT'S DON'T THEY'RE WE'VE I'M YOU'LL SHE'D"),
    ("contractions-mixed-case", "It'S Don'T They'Re We'vE"),
    ("apostrophes-other", "rock 'n' roll, '90s, o'clock, ’curly’ quotes"),
    # -- accents (precomposed, NFC already)
    ("accents-nfc", "naïve café résumé Ångström São Paulo Zürich"),
    ("full-width", "ＡＢＣ１２３！？（全角）ｶﾀｶﾅ"),
    ("case", "UPPER lower MiXeD CamelCase snake_case SCREAMING_CASE"),
    # -- URLs, paths, identifiers
    ("url", "https://example.com/path/to/page?q=cat%20photo&lang=en#section-2"),
    ("url-idn-email", "http://例え.jp/パス user.name+tag@example.co.uk"),
    ("path", r"C:\Users\me\Pictures\IMG_0001.JPG /home/me/.cache/edgecap/x.gguf"),
    ("hash", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    # -- control bytes and invisible characters
    ("control-bytes", "\x00\x01\x02\x07\x08\x1b\x7f"),
    ("ansi-escape", "\x1b[31mred\x1b[0m normal"),
    ("zero-width", "zero\u200bwidth\u200cjoin\u200dbom\ufeffend"),
    ("replacement-char", "bad \ufffd byte"),
    # -- long input
    ("long-word", "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3),
    ("long-run-x", "x" * 2000),
    ("long-text", "The quick brown fox jumps over the lazy dog. " * 60),
    # -- not in NFC: llama.cpp does not normalize (see the module docstring)
    ("nfd-combining-accent", "cafe\u0301 re\u0301sume\u0301"),
    ("nfd-stacked-marks", "a\u0308\u0301 o\u0323\u0302"),
    ("nfd-hangul-jamo", "\u1100\u1161\u11a8"),
    ("nfc-singletons", "\u212b \u2126 \uf900"),
]

SLASH_S_ID = 128247
SLASH_S_CASE = "slash-s-tag"
PARAMS = [pytest.param(text, id=case_id) for case_id, text in CASES if case_id != SLASH_S_CASE]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):
    return tokenizers.Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))


class Vocab:
    """The text GGUF's vocabulary, loaded without weights."""

    def __init__(self, path: Path) -> None:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = LlamaModel(path_model=str(path), params=params, verbose=False)
        self.vocab = self.model.vocab

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 16  # byte-level BPE never makes more tokens than there are bytes
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, False, True)
        assert n >= 0, f"llama_tokenize needs {-n} tokens, more than {size}"
        return list(buf[:n])

    def detokenize(self, tokens: list[int], *, unparse_special: bool) -> str:
        ids = (llama_cpp.llama_token * max(len(tokens), 1))(*tokens)
        size = 64 * len(tokens) + 16
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(
            self.vocab, ids, len(tokens), buf, size, False, unparse_special
        )
        assert n >= 0, f"llama_detokenize needs {-n} bytes, more than {size}"
        return buf.raw[:n].decode("utf-8")

    def close(self) -> None:
        self.model.close()


@pytest.fixture(scope="module")
def vocab(tiny_gguf: tuple[Path, Path]) -> Iterator[Vocab]:
    v = Vocab(tiny_gguf[0])
    yield v
    v.close()


def test_cases_are_varied() -> None:
    assert len(CASES) >= 60
    assert len({case_id for case_id, _ in CASES}) == len(CASES)
    assert len({text for _, text in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def engine(tiny_model_files: ModelFiles, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(home=tmp_path_factory.mktemp("home"), image_cache_entries=0)
    with Engine(tiny_model_files, settings) as eng:
        yield eng


@pytest.mark.parametrize("text", PARAMS)
def test_tokens_match_reference(engine: Engine, reference, text: str) -> None:
    assert engine.tokenize(text) == reference.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", PARAMS)
def test_detokenize_matches_reference(vocab: Vocab, reference, text: str) -> None:
    """llama.cpp decodes the reference's tokens to exactly the reference's text."""
    ids = reference.encode(text, add_special_tokens=False).ids
    control = [t.content for t in reference.get_added_tokens_decoder().values() if t.special]
    special = any(token in text for token in control)
    assert vocab.detokenize(ids, unparse_special=special) == reference.decode(
        ids, skip_special_tokens=False
    )
    if special:  # a plain detokenize drops control tokens and keeps everything else
        assert vocab.detokenize(ids, unparse_special=False) == reference.decode(
            ids, skip_special_tokens=True
        )


def test_slash_s_is_a_known_llama_cpp_difference(engine: Engine, reference) -> None:
    text = dict(CASES)[SLASH_S_CASE]
    ours, theirs = engine.tokenize(text), reference.encode(text, add_special_tokens=False).ids
    assert SLASH_S_ID in ours and SLASH_S_ID not in theirs
    assert len(ours) < len(theirs)


def test_vocabulary_pieces_match_reference(vocab: Vocab, reference) -> None:
    """Every one of the 151,643 base tokens renders to the same bytes as in tokenizer.json."""
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    buf = ctypes.create_string_buffer(256)
    mismatches = []
    for token, token_id in reference.get_vocab(with_added_tokens=False).items():
        n = llama_cpp.llama_token_to_piece(vocab.vocab, token_id, buf, len(buf), 0, True)
        if buf.raw[:n] != bytes(byte_of[char] for char in token):
            mismatches.append((token_id, token, buf.raw[:n]))
    assert mismatches == []


def test_token_kinds_match_reference(vocab: Vocab, reference) -> None:
    """Control tokens in llama.cpp are exactly tokenizer.json's special tokens, user-defined
    ones its other added tokens, and everything else is a normal token — except '</s>'."""
    added = reference.get_added_tokens_decoder()
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab.vocab)
    assert n_vocab >= len(reference.get_vocab(with_added_tokens=True))
    kinds = {"normal": ATTR_NORMAL, "control": ATTR_CONTROL, "user": ATTR_USER_DEFINED}
    differ = {}
    for token_id in range(n_vocab):
        if token_id in added:
            want = "control" if added[token_id].special else "user"
        elif reference.id_to_token(token_id) is not None:
            want = "normal"
        else:
            continue  # padding rows beyond the tokenizer: UNUSED, never produced
        attr = llama_cpp.llama_vocab_get_attr(vocab.vocab, token_id)
        if attr != kinds[want]:
            differ[token_id] = (reference.id_to_token(token_id), want, attr)
    assert set(differ) == {SLASH_S_ID}, differ  # the known defect, and nothing else
    assert llama_cpp.llama_vocab_is_eog(vocab.vocab, SLASH_S_ID)
