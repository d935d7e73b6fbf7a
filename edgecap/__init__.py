"""edgecap: offline image captioning with Qwen2.5-VL on llama.cpp."""

__version__ = "0.1.0"
