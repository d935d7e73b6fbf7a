"""Prompt evaluation: mtmd chunks into sequence slots of one shared llama.cpp context.

A prompt is tokenized by mtmd into text and image chunks. Each slot (a sequence id) remembers
which "text before the image + image" its KV cache holds, so a new question about the same image
only evaluates the new text; image embeddings come from the cache when the encoder has seen the
image before. Positions and KV cells are tracked apart: after an image (M-RoPE) the next
position is ``start + max(nx, ny)`` while ``nx * ny`` cells are used.
"""

from __future__ import annotations

import ctypes
import hashlib
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from edgecap.engine import llama_log
from edgecap.engine.cache import EmbeddingCache, EmbeddingKey
from edgecap.errors import InferenceError
from edgecap.records import LoadedImage

N_BATCH = 512
_NO_CALLBACK = mtmd.mtmd_helper_post_decode_callback()  # a NULL function pointer


@dataclass
class Slot:
    """One sequence in the shared context and what its KV cache currently holds."""

    seq_id: int
    prefix_key: str | None = None  # identity of "text before the image + the image"
    prefix_pos: int = 0  # next position after that prefix
    prefix_cells: int = 0  # KV cells that prefix occupies
    cells: int = 0  # KV cells in use by this sequence
    last_used: float = 0.0


@dataclass
class Prompt:
    """A tokenized prompt: mtmd chunks, and the identity of its cacheable prefix."""

    chunks: Any  # mtmd_input_chunks_p
    n_tokens: int
    image_index: int | None  # index of the image chunk, if any
    prefix_key: str | None
    image_key: EmbeddingKey | None
    _keep: list[Any] = field(default_factory=list)  # ctypes buffers that must outlive chunks


class PromptEvaluator:
    """Tokenizes prompts and evaluates them into slots, reusing what the caches hold."""

    def __init__(
        self,
        mtmd_ctx: Any,
        llama_ctx: Any,
        *,
        n_ctx: int,
        n_slots: int,
        n_embd_inp: int,
        embeddings: EmbeddingCache,
        mmproj_fingerprint: str,
        counters: dict[str, int],
    ) -> None:
        self._mtmd = mtmd_ctx
        self._ctx = llama_ctx  # llama_cpp._internals.LlamaContext
        self._memory = llama_cpp.llama_get_memory(llama_ctx.ctx)
        self.n_ctx = n_ctx
        self._n_embd_inp = n_embd_inp
        self._embeddings = embeddings
        self._mmproj_fingerprint = mmproj_fingerprint
        self.counters = counters
        self._slots = [Slot(seq_id=i) for i in range(n_slots)]

    def tokenize(self, text: str, image: LoadedImage | None) -> Prompt:
        chunks = mtmd.mtmd_input_chunks_init()
        # Qwen's tokenizer.json normalises to NFC; llama.cpp does not normalise at all.
        encoded = unicodedata.normalize("NFC", text).encode("utf-8")
        inp = mtmd.mtmd_input_text(encoded, len(encoded), False, True)
        keep: list[Any] = [encoded]
        if image is not None:
            pixels = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
            bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, pixels)
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        else:
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)()
        try:
            status = mtmd.mtmd_tokenize(
                self._mtmd, chunks, ctypes.byref(inp), bitmaps, 1 if image else 0
            )
        finally:
            if image is not None:
                mtmd.mtmd_bitmap_free(bitmap)
        if status != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise InferenceError(f"mtmd could not tokenize the prompt (status {status})")

        image_index = None
        prefix = hashlib.sha256()
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                image_index = i
                break
            n = ctypes.c_size_t()
            ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            prefix.update(np.ctypeslib.as_array(ids, shape=(n.value,)).tobytes())
        image_key = None
        prefix_key = None
        if image is not None and image_index is not None:
            image_key = EmbeddingKey(
                image.sha256, image.width, image.height, self._mmproj_fingerprint
            )
            prefix.update(repr(image_key).encode())
            prefix_key = prefix.hexdigest()
        return Prompt(
            chunks=chunks,
            n_tokens=mtmd.mtmd_helper_get_n_tokens(chunks),
            image_index=image_index,
            prefix_key=prefix_key,
            image_key=image_key,
            _keep=keep,
        )

    def slot_for(self, prompt: Prompt, cells: int) -> tuple[Slot, dict[str, bool]]:
        """A slot whose KV cache already holds this prompt's prefix, else a fresh one.

        ``cells`` is what the whole request will occupy (prompt + tokens to generate); other
        slots are evicted until it fits in the shared pool.
        """
        if prompt.prefix_key is not None:
            for slot in self._slots:
                if slot.prefix_key == prompt.prefix_key:
                    # Drop everything after the image; keep system prompt + image.
                    llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, slot.prefix_pos, -1)
                    slot.cells = slot.prefix_cells
                    self._make_room(slot, cells - slot.prefix_cells)
                    self.counters["prefix_cache_hits"] += 1
                    return slot, {"prefix": True, "image": True}
        return self.fresh_slot(cells), {}

    def fresh_slot(self, cells: int) -> Slot:
        """The least recently used slot, emptied, with room for ``cells`` more cells."""
        slot = min(self._slots, key=lambda s: s.last_used)
        self._clear(slot)
        self._make_room(slot, cells)
        return slot

    def _make_room(self, keep: Slot, cells: int) -> None:
        """Evict the least recently used other slots until ``cells`` more cells fit."""
        for other in sorted(self._slots, key=lambda s: s.last_used):
            if sum(s.cells for s in self._slots) + cells <= self.n_ctx:
                return
            if other is not keep:
                self._clear(other)

    def _clear(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.prefix_key, slot.prefix_pos, slot.prefix_cells, slot.cells = None, 0, 0, 0

    def prefill(
        self,
        slot: Slot,
        prompt: Prompt,
        timings: dict[str, float],
        hits: dict[str, bool] | None = None,
    ) -> int:
        """Evaluate the prompt's chunks into ``slot`` (skipping a cached prefix).

        Returns the next position, which after an image is not the number of cells used.
        """
        hits = hits if hits is not None else {}
        slot.last_used = time.monotonic()
        n_chunks = mtmd.mtmd_input_chunks_size(prompt.chunks)
        first = 0
        n_past = 0
        if hits.get("prefix"):
            first = (prompt.image_index or 0) + 1
            n_past = slot.prefix_pos
        timings.setdefault("encode", 0.0)
        started = time.perf_counter()
        new_n_past = llama_cpp.llama_pos(0)
        for i in range(first, n_chunks):
            chunk = mtmd.mtmd_input_chunks_get(prompt.chunks, i)
            last = i == n_chunks - 1
            new_n_past.value = n_past  # the helpers add to it rather than overwrite it
            if i == prompt.image_index:
                embd = self._image_embedding(chunk, prompt.image_key, timings, hits)
                status = mtmd.mtmd_helper_decode_image_chunk(
                    self._mtmd, self._ctx.ctx, chunk,
                    embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                    n_past, slot.seq_id, N_BATCH, ctypes.byref(new_n_past), _NO_CALLBACK, None,
                )  # fmt: skip
            else:
                status = mtmd.mtmd_helper_eval_chunk_single(
                    self._mtmd, self._ctx.ctx, chunk, n_past, slot.seq_id, N_BATCH, last,
                    ctypes.byref(new_n_past),
                )  # fmt: skip
            if status != 0:
                self._clear(slot)
                raise InferenceError(
                    f"llama.cpp failed to evaluate the prompt: {llama_log.tail(3)}"
                )
            slot.cells += mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            n_past = new_n_past.value
            if i == prompt.image_index:
                slot.prefix_key = prompt.prefix_key
                slot.prefix_pos, slot.prefix_cells = n_past, slot.cells
        timings["prefill"] = time.perf_counter() - started - timings["encode"]
        return n_past

    def _image_embedding(
        self,
        chunk: Any,
        key: EmbeddingKey | None,
        timings: dict[str, float],
        hits: dict[str, bool],
    ) -> np.ndarray:
        """The projector's output for this image chunk: from the cache, or by encoding it."""
        if key is not None and (cached := self._embeddings.get(key)) is not None:
            self.counters["image_cache_hits"] += 1
            hits["image"] = True
            return cached
        started = time.perf_counter()
        if mtmd.mtmd_encode_chunk(self._mtmd, chunk) != 0:
            raise InferenceError(f"the vision encoder failed: {llama_log.tail(3)}")
        n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        out = mtmd.mtmd_get_output_embd(self._mtmd)
        embd = np.ctypeslib.as_array(out, shape=(n_tokens * self._n_embd_inp,)).copy()
        embd = embd.reshape(n_tokens, self._n_embd_inp)
        timings["encode"] += time.perf_counter() - started
        self.counters["image_encodes"] += 1
        if key is not None:
            self._embeddings.put(key, embd)
        return embd
