"""Prompt evaluation: mtmd chunks into sequence slots of one shared llama.cpp context.

The scheduler (:mod:`edgecap.engine.scheduler`) drives evaluation piece by piece so that other
sequences keep decoding; :meth:`PromptEvaluator.prefill` evaluates a whole prompt at once.

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
    busy: bool = False  # a sequence in flight owns it


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
            if is_image(chunk):
                image_index = i
                break
            prefix.update(text_tokens(chunk).tobytes())
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

    # -- slots -------------------------------------------------------------------------------

    def reserve(
        self, prompt: Prompt, cells: int, *, reuse: bool = True
    ) -> tuple[Slot, dict[str, bool]] | None:
        """An idle slot for ``prompt``, marked busy, with room for ``cells`` cells; else None.

        A slot already holding the prompt's prefix (system prompt + image) is reused; if that
        slot is busy with another sequence, the prefix's KV cells are shared into a free slot
        (``seq_cp``: no copy in the unified pool). Only idle slots are ever evicted, so a
        request that does not fit beside the running ones waits (None) rather than break them.
        """
        holder = None
        if reuse and prompt.prefix_key is not None:
            holder = next((s for s in self._slots if s.prefix_key == prompt.prefix_key), None)
        if holder is not None and not holder.busy:
            slot = holder
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, slot.prefix_pos, -1)
            slot.cells = slot.prefix_cells
        else:
            idle = [s for s in self._slots if not s.busy]
            if not idle:
                return None
            slot = min(idle, key=lambda s: s.last_used)
            self._clear(slot)
        needed = cells - (slot.cells if holder is slot else 0)
        if not self._make_room(slot, needed):
            if holder is not slot:
                slot.last_used = 0.0  # emptied: the first to be reused
            return None
        slot.busy = True
        slot.last_used = time.monotonic()
        if holder is None:
            return slot, {}
        if holder is not slot:  # share the busy holder's prefix
            llama_cpp.llama_memory_seq_cp(
                self._memory, holder.seq_id, slot.seq_id, -1, holder.prefix_pos
            )
            slot.prefix_key, slot.prefix_pos = holder.prefix_key, holder.prefix_pos
            slot.prefix_cells = slot.cells = holder.prefix_cells
        self.counters["prefix_cache_hits"] += 1
        return slot, {"prefix": True, "image": True}

    def busy_slots(self) -> int:
        """Slots owned by a sequence in flight."""
        return sum(s.busy for s in self._slots)

    def release(self, slot: Slot) -> None:
        """A sequence is done with ``slot``: keep its complete prefix for the next question."""
        if slot.prefix_key is None:
            self._clear(slot)
        else:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, slot.prefix_pos, -1)
            slot.cells = slot.prefix_cells
        slot.busy = False
        slot.last_used = time.monotonic()

    def _make_room(self, keep: Slot, cells: int) -> bool:
        """Evict idle slots, least recently used first, until ``cells`` more cells fit."""
        for other in sorted(self._slots, key=lambda s: s.last_used):
            if self._used() + cells <= self.n_ctx:
                return True
            if other is not keep and not other.busy:
                self._clear(other)
        return self._used() + cells <= self.n_ctx

    def _used(self) -> int:
        return sum(s.cells for s in self._slots)  # shared prefix cells count twice: an upper bound

    def _clear(self, slot: Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.prefix_key, slot.prefix_pos, slot.prefix_cells, slot.cells = None, 0, 0, 0

    # -- evaluation --------------------------------------------------------------------------

    def prefill(self, slot: Slot, prompt: Prompt, timings: dict[str, float]) -> int:
        """Evaluate the whole prompt into a fresh ``slot`` at once (no other sequence runs).

        Returns the next position; the last token's logits are at batch index -1.
        """
        timings.setdefault("encode", 0.0)
        started = time.perf_counter()
        batch = TokenBatch(N_BATCH)
        n_past = 0
        n_chunks = mtmd.mtmd_input_chunks_size(prompt.chunks)
        try:
            for i in range(n_chunks):
                chunk = mtmd.mtmd_input_chunks_get(prompt.chunks, i)
                if i == prompt.image_index:
                    embd = self.image_embedding(chunk, prompt.image_key, timings, {})
                    n_past = self.decode_image(slot, prompt, chunk, embd, n_past)
                    continue
                tokens = text_tokens(chunk)
                for start in range(0, len(tokens), N_BATCH):
                    batch.clear()
                    for j, token in enumerate(tokens[start : start + N_BATCH]):
                        last = i == n_chunks - 1 and start + j == len(tokens) - 1
                        batch.add(int(token), n_past + start + j, slot.seq_id, last)
                    self.decode(batch)
                slot.cells += len(tokens)
                n_past += len(tokens)
        finally:
            batch.close()
        timings["prefill"] = time.perf_counter() - started - timings["encode"]
        return n_past

    def decode(self, batch: TokenBatch) -> None:
        """``llama_decode`` the batch; raises :class:`InferenceError` if llama.cpp fails."""
        if llama_cpp.llama_decode(self._ctx.ctx, batch.raw) != 0:
            raise InferenceError(f"llama_decode failed: {llama_log.tail(3)}")

    def decode_image(
        self,
        slot: Slot,
        prompt: Prompt,
        chunk: Any,
        embd: np.ndarray,
        n_past: int,
        n_batch: int = N_BATCH,
        between: Any = _NO_CALLBACK,
    ) -> int:
        """Decode an image chunk's embeddings into ``slot`` in batches of ``n_batch``.

        ``between`` (an mtmd post-decode callback) runs after every batch: the scheduler decodes
        other sequences' tokens there. Returns the next position (M-RoPE: not the cell count).
        """
        new_n_past = llama_cpp.llama_pos(n_past)
        status = mtmd.mtmd_helper_decode_image_chunk(
            self._mtmd, self._ctx.ctx, chunk,
            embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            n_past, slot.seq_id, n_batch, ctypes.byref(new_n_past), between, None,
        )  # fmt: skip
        if status != 0:
            self._clear(slot)
            raise InferenceError(f"llama.cpp failed to evaluate the image: {llama_log.tail(3)}")
        slot.cells += mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        slot.prefix_key = prompt.prefix_key
        slot.prefix_pos, slot.prefix_cells = new_n_past.value, slot.cells
        return new_n_past.value

    def image_embedding(
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
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - started
        self.counters["image_encodes"] += 1
        if key is not None:
            self._embeddings.put(key, embd)
        return embd


def text_tokens(chunk: Any) -> np.ndarray:
    """The token ids of a text chunk (a view into mtmd's memory: use while chunks live)."""
    n = ctypes.c_size_t()
    ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
    if n.value == 0:
        return np.zeros(0, dtype=np.int32)
    return np.ctypeslib.as_array(ids, shape=(n.value,))


def is_image(chunk: Any) -> bool:
    return bool(mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE)


class TokenBatch:
    """A ``llama_batch`` of text tokens, each with its own position and sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw: Any = llama_cpp.llama_batch_init(capacity, 0, 1)  # ctypes stubs mistype it
        self.n = 0

    def clear(self) -> None:
        self.n = 0
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append a token; returns its index (where its logits are, if ``logits``)."""
        i = self.n
        if i >= self.capacity:
            raise InferenceError("internal: token batch overflow")
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq_id
        raw.logits[i] = logits
        self.n = raw.n_tokens = i + 1
        return i

    def close(self) -> None:
        if self.raw is not None:
            llama_cpp.llama_batch_free(self.raw)
            self.raw = None
