"""From a Hugging Face checkpoint to the GGUF files llama.cpp runs, with our own code.

- :func:`convert` (:mod:`edgecap.convert.converter`) writes the text model and the vision
  projector, streaming, from a Qwen2.5-VL safetensors checkpoint
  (:mod:`edgecap.convert.checkpoint` reads it, without torch);
- :func:`quantize` (:mod:`edgecap.convert.quantizer`) turns an f32/f16/bf16 file into K-quants
  (text) or Q8_0 (projector) with llama.cpp, in a child process;
- :mod:`edgecap.convert.progress`: progress bars, and outputs that appear whole or not at all.

``tools/convert.py`` and ``tools/quantize.py`` are their command lines; ``edgecap demo`` uses
:func:`convert` to build its tiny model from an installed wheel.
"""

from edgecap.convert.converter import OUTTYPES, convert
from edgecap.convert.quantizer import QUANT_TYPES, quantize

__all__ = ["OUTTYPES", "QUANT_TYPES", "convert", "quantize"]
