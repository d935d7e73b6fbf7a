"""The captioning engine: one llama.cpp context and one mtmd context, driven token by token.

We own the loop on llama-cpp-python's low-level and mtmd bindings instead of its chat handlers,
so that (see spec/qwen25vl-gguf.md):

- the image reaches mtmd as raw RGB already resized to multiples of 28 (no second resize);
- image embeddings are cached (a new question about the same picture skips the encoder), and
  the KV cache of "system prompt + image" is kept per sequence slot, so such a question also
  skips the image prefill;
- positions and KV cells are tracked separately (M-RoPE: an image consumes max(nx, ny)
  positions but nx*ny cells);
- the vision encoder runs with flash attention.

The engine is not thread-safe (neither is llama.cpp); calls are serialised by a lock. Several
sequences share one context through slots: that is the seam for batched decoding later.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import json
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
from llama_cpp._internals import LlamaContext, LlamaModel

from edgecap import gguf_check, llama_log
from edgecap.cache import EmbeddingCache, EmbeddingKey, file_fingerprint
from edgecap.config import PIXELS_PER_TOKEN, Settings
from edgecap.errors import ContextOverflow, InferenceError, ModelError
from edgecap.hardware import detect_backend, physical_cores
from edgecap.prompt import ChatTemplate
from edgecap.records import (
    CaptionRequest,
    CaptionResult,
    FinishReason,
    LoadedImage,
    ModelFiles,
    TokenPiece,
)
from edgecap.sampling import LoopGuard, make_grammar, make_sampler

N_SLOTS = 4  # sequences sharing the context (each keeps its own prefix cache)
N_BATCH = 512
_NO_CALLBACK = mtmd.mtmd_helper_post_decode_callback()  # a NULL function pointer


def use_extra_buffers(settings: Settings) -> bool:
    """Whether llama.cpp may move weights into its extra CPU buffer types.

    On CPUs with AMX, this llama.cpp puts quantized weights in its AMX buffer, whose matmul
    segfaults (ldtilecfg; llama.cpp #20824, fix pending upstream): every Q4_K_M/Q8_0 prompt would
    kill the process. So the default is off there, at the cost of weight repacking.
    """
    if settings.extra_buffers is not None:
        return settings.extra_buffers
    return "AMX_INT8" not in detect_backend().features


@dataclass
class _Slot:
    """One sequence in the shared context and what its KV cache currently holds."""

    seq_id: int
    prefix_key: str | None = None  # identity of "text before the image + the image"
    prefix_pos: int = 0  # next position after that prefix
    prefix_cells: int = 0  # KV cells that prefix occupies
    cells: int = 0  # KV cells in use by this sequence
    last_used: float = 0.0


@dataclass
class _Prompt:
    """A tokenized prompt: mtmd chunks, and the identity of its cacheable prefix."""

    chunks: Any  # mtmd_input_chunks_p
    n_tokens: int
    image_index: int | None  # index of the image chunk, if any
    prefix_key: str | None
    image_key: EmbeddingKey | None
    _keep: list[Any] = field(default_factory=list)  # ctypes buffers that must outlive chunks


class Engine:
    """Loads a text GGUF and its projector; captions ``CaptionRequest``s."""

    def __init__(self, model: ModelFiles, settings: Settings) -> None:
        llama_log.capture_native_logs()
        text_info = gguf_check.check_text_model(model.text)
        gguf_check.check_mmproj(model.mmproj)
        gguf_check.check_pair(model.text, model.mmproj)

        self.model_id = model.id
        self.settings = settings
        self.counters = {"image_encodes": 0, "image_cache_hits": 0, "prefix_cache_hits": 0}
        self._lock = threading.Lock()
        self._loop_guard = LoopGuard()
        threads = settings.n_threads or physical_cores()
        self.n_ctx = min(settings.n_ctx, text_info.n_ctx_train or settings.n_ctx)

        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 999 if settings.n_gpu_layers < 0 else settings.n_gpu_layers
        mparams.use_extra_bufts = use_extra_buffers(settings)
        try:
            self._model = LlamaModel(path_model=str(model.text), params=mparams, verbose=False)
        except ValueError as exc:
            raise ModelError(
                f"llama.cpp could not load {model.text}: {llama_log.tail(3)}", parameter="model"
            ) from exc
        self._vocab = self._model.vocab
        self._n_embd_inp = llama_cpp.llama_model_n_embd_inp(self._model.model)

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = N_BATCH
        cparams.n_ubatch = N_BATCH
        cparams.n_seq_max = N_SLOTS
        cparams.kv_unified = True  # slots share one pool of cells
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        try:
            self._ctx = LlamaContext(model=self._model, params=cparams, verbose=False)
        except ValueError as exc:
            raise ModelError(f"llama.cpp could not create a context: {llama_log.tail(3)}") from exc
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)

        vparams = mtmd.mtmd_context_params_default()
        vparams.use_gpu = settings.mmproj_gpu and bool(llama_cpp.llama_supports_gpu_offload())
        vparams.n_threads = threads
        vparams.print_timings = False
        vparams.warmup = False
        vparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        # We resize to exact multiples of 28 ourselves; these bounds only keep mtmd from
        # resizing again (its default minimum of 8 tokens would upscale small images).
        vparams.image_min_tokens = 1
        vparams.image_max_tokens = max(settings.max_pixels_ceiling // PIXELS_PER_TOKEN, 1)
        self._mtmd = mtmd.mtmd_init_from_file(
            str(model.mmproj).encode(), self._model.model, vparams
        )
        if not self._mtmd:
            raise ModelError(
                f"llama.cpp could not load the projector {model.mmproj}: {llama_log.tail(3)}",
                parameter="model",
            )
        if not mtmd.mtmd_support_vision(self._mtmd):
            raise ModelError(f"{model.mmproj} is not a vision projector.", parameter="model")
        marker = (mtmd.mtmd_default_marker() or b"<__media__>").decode()

        metadata = self._model.metadata()
        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(
                f"{model.text} carries no chat template; re-convert it with tools/convert.py."
            )
        self._template = ChatTemplate(template, marker)
        self._mmproj_fingerprint = file_fingerprint(model.mmproj)
        self._embeddings = EmbeddingCache(settings.image_cache_entries, settings.image_cache_dir)
        self._slots = [_Slot(seq_id=i) for i in range(N_SLOTS)]

    # ------------------------------------------------------------------ public API

    def caption(self, request: CaptionRequest) -> CaptionResult:
        """Run ``stream`` to the end and return its result record."""
        for item in self.stream(request):
            if isinstance(item, CaptionResult):
                return item
        raise InferenceError("generation ended without a result")  # pragma: no cover

    def stream(self, request: CaptionRequest) -> Iterator[TokenPiece | CaptionResult]:
        """Yield text pieces as they are generated, then one ``CaptionResult``."""
        with self._lock:
            yield from self._generate(request)

    def prompt_logits(
        self, request: CaptionRequest, *, raw_prompt: str | None = None
    ) -> np.ndarray:
        """Last-token logits after the prompt (for parity tests and tools), as float32.

        ``raw_prompt`` bypasses the chat template (use the image marker for the image).
        """
        with self._lock:
            text = raw_prompt if raw_prompt is not None else self._render(request)
            prompt = self._tokenize(text, request.image)
            try:
                slot = self._fresh_slot(prompt.n_tokens)
                self._prefill(slot, prompt, {})
                n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
                logits = llama_cpp.llama_get_logits_ith(self._ctx.ctx, -1)
                return np.ctypeslib.as_array(logits, shape=(n_vocab,)).copy()
            finally:
                mtmd.mtmd_input_chunks_free(prompt.chunks)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """The model's tokenization of ``text`` (no BOS), NFC-normalised as the reference does."""
        normalized = unicodedata.normalize("NFC", text).encode()
        return list(self._model.tokenize(normalized, add_bos=False, special=special))

    def close(self) -> None:
        if getattr(self, "_mtmd", None):
            mtmd.mtmd_free(self._mtmd)
            self._mtmd = None
        if getattr(self, "_ctx", None) is not None:
            self._ctx.close()
        if getattr(self, "_model", None) is not None:
            self._model.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ generation

    def _render(self, request: CaptionRequest) -> str:
        system = request.system_prompt or self.settings.system_prompt
        return self._template.render(
            request.prompt, system_prompt=system, with_image=request.image is not None
        )

    def _generate(self, request: CaptionRequest) -> Iterator[TokenPiece | CaptionResult]:
        timings = {"load_image": request.image.load_seconds if request.image else 0.0}
        grammar = make_grammar(request.json_schema) if request.json_schema is not None else None
        prompt = self._tokenize(self._render(request), request.image)
        try:
            budget = self.n_ctx - prompt.n_tokens
            if budget < 1:
                raise ContextOverflow(
                    f"The prompt needs {prompt.n_tokens} tokens but the context holds "
                    f"{self.n_ctx}; lower maxPixels or shorten the prompt.",
                    parameter="maxPixels" if request.image else "prompt",
                )
            slot, hits = self._slot_for(prompt)
            n_past = self._prefill(slot, prompt, timings, hits)
        finally:
            mtmd.mtmd_input_chunks_free(prompt.chunks)

        sampler = make_sampler(self._model, request.sampling, grammar)
        max_tokens = min(request.sampling.max_tokens, budget)
        batch = llama_cpp.llama_batch_init(1, 0, 1)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        tokens: list[int] = []
        pieces: list[str] = []
        finish: FinishReason = "length"
        started = time.perf_counter()
        try:
            while len(tokens) < max_tokens:
                token = sampler.sample(self._ctx, -1)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                tokens.append(token)
                piece = decoder.decode(self._token_bytes(token))
                pieces.append(piece)
                if piece:
                    yield TokenPiece(piece)
                if self._loop_guard.loop_start(tokens) is not None:
                    finish = "loop"
                    break
                if len(tokens) == max_tokens:
                    break
                self._decode_one(batch, token, n_past, slot.seq_id)
                n_past += 1
                slot.cells += 1
        finally:
            llama_cpp.llama_batch_free(batch)
            sampler.close()
        timings["generate"] = time.perf_counter() - started

        text = "".join(pieces) + decoder.decode(b"", final=True)
        if finish == "loop":
            cut = self._loop_guard.loop_start(tokens) or len(tokens)
            text = self._model.detokenize(tokens[:cut]).decode("utf-8", "replace")
        text = text.strip()
        if request.json_schema is not None:
            self._check_json(text, request.json_schema, finish)
        yield CaptionResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt.n_tokens,
            image_tokens=request.image.tokens if request.image else 0,
            generated_tokens=len(tokens),
            timings=timings,
            model=self.model_id,
            image_cache_hit=hits.get("image", False),
            prefix_cache_hit=hits.get("prefix", False),
        )

    def _token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # buffer too small: -n is the size needed
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _decode_one(self, batch: Any, token: int, pos: int, seq: int) -> None:
        # ``batch`` is a llama_batch; typed Any because the ctypes stubs mistype its arrays.
        batch.n_tokens = 1
        batch.token[0] = token
        batch.pos[0] = pos
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = seq
        batch.logits[0] = True
        if llama_cpp.llama_decode(self._ctx.ctx, batch) != 0:
            raise InferenceError(f"llama_decode failed: {llama_log.tail(3)}")

    @staticmethod
    def _check_json(text: str, schema: dict[str, Any], finish: FinishReason) -> None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = " (raise maxTokens)" if finish == "length" else ""
            raise InferenceError(f"the output is not complete JSON{hint}: {exc}") from exc
        if schema:
            try:
                jsonschema.validate(value, schema)
            except jsonschema.ValidationError as exc:
                raise InferenceError(
                    f"the output does not match the schema: {exc.message}"
                ) from exc

    # ------------------------------------------------------------------ prompt evaluation

    def _tokenize(self, text: str, image: LoadedImage | None) -> _Prompt:
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
        return _Prompt(
            chunks=chunks,
            n_tokens=mtmd.mtmd_helper_get_n_tokens(chunks),
            image_index=image_index,
            prefix_key=prefix_key,
            image_key=image_key,
            _keep=keep,
        )

    def _slot_for(self, prompt: _Prompt) -> tuple[_Slot, dict[str, bool]]:
        """A slot whose KV cache already holds this prompt's prefix, else a fresh one."""
        if prompt.prefix_key is not None:
            for slot in self._slots:
                if slot.prefix_key == prompt.prefix_key:
                    # Drop everything after the image; keep system prompt + image.
                    llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, slot.prefix_pos, -1)
                    slot.cells = slot.prefix_cells
                    self._make_room(slot, prompt.n_tokens)
                    self.counters["prefix_cache_hits"] += 1
                    return slot, {"prefix": True, "image": True}
        return self._fresh_slot(prompt.n_tokens), {}

    def _fresh_slot(self, n_tokens: int) -> _Slot:
        slot = min(self._slots, key=lambda s: s.last_used)
        self._clear(slot)
        self._make_room(slot, n_tokens)
        return slot

    def _make_room(self, keep: _Slot, n_tokens: int) -> None:
        """Evict the least recently used other slots until ``n_tokens`` more cells fit."""
        for other in sorted(self._slots, key=lambda s: s.last_used):
            if sum(s.cells for s in self._slots) + n_tokens <= self.n_ctx:
                return
            if other is not keep:
                self._clear(other)

    def _clear(self, slot: _Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.prefix_key, slot.prefix_pos, slot.prefix_cells, slot.cells = None, 0, 0, 0

    def _prefill(
        self,
        slot: _Slot,
        prompt: _Prompt,
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
