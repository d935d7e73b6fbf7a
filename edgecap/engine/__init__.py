"""The llama.cpp layer: one ``Engine`` owns a text model, its vision projector and their context.

``engine`` loads and streams; ``prefill`` evaluates prompts (mtmd chunks, sequence slots, prefix
and embedding reuse); ``prompt`` renders the chat template; ``sampling`` builds the sampler chain,
JSON grammar and loop guard; ``cache`` keeps image embeddings; ``gguf_check`` validates files
before llama.cpp sees them; ``hardware`` and ``llama_log`` describe and quiet the native library.
"""
