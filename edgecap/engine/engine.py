"""The captioning engine: one llama.cpp context and one mtmd context, driven token by token.

We own the loop on llama-cpp-python's low-level and mtmd bindings instead of its chat handlers,
so that (see docs/qwen25vl-gguf.md):

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
import json
import threading
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

import jsonschema
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
from llama_cpp._internals import LlamaContext, LlamaModel

from edgecap.config import PIXELS_PER_TOKEN, Settings
from edgecap.engine import gguf_check, llama_log
from edgecap.engine.cache import EmbeddingCache, file_fingerprint
from edgecap.engine.hardware import detect_backend, physical_cores
from edgecap.engine.prefill import N_BATCH, PromptEvaluator
from edgecap.engine.prompt import ChatTemplate
from edgecap.engine.sampling import LoopGuard, make_grammar, make_sampler
from edgecap.errors import ContextOverflow, InferenceError, ModelError
from edgecap.records import (
    CaptionRequest,
    CaptionResult,
    FinishReason,
    ModelFiles,
    TokenPiece,
)

N_SLOTS = 4  # sequences sharing the context (each keeps its own prefix cache)


def use_extra_buffers(settings: Settings) -> bool:
    """Whether llama.cpp may move weights into its extra CPU buffer types.

    On CPUs with AMX, this llama.cpp puts quantized weights in its AMX buffer, whose matmul
    segfaults (ldtilecfg; llama.cpp #20824, fix pending upstream): every Q4_K_M/Q8_0 prompt would
    kill the process. So the default is off there, at the cost of weight repacking.
    """
    if settings.extra_buffers is not None:
        return settings.extra_buffers
    return "AMX_INT8" not in detect_backend().features


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
        self._prompts = PromptEvaluator(
            self._mtmd,
            self._ctx,
            n_ctx=self.n_ctx,
            n_slots=N_SLOTS,
            n_embd_inp=llama_cpp.llama_model_n_embd_inp(self._model.model),
            embeddings=EmbeddingCache(settings.image_cache_entries, settings.image_cache_dir),
            mmproj_fingerprint=file_fingerprint(model.mmproj),
            counters=self.counters,
        )

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
            prompt = self._prompts.tokenize(text, request.image)
            try:
                slot = self._prompts.fresh_slot(prompt.n_tokens)
                self._prompts.prefill(slot, prompt, {})
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
        system = self.settings.system_prompt_for(request.system_prompt)
        return self._template.render(
            request.prompt, system_prompt=system, with_image=request.image is not None
        )

    def _generate(self, request: CaptionRequest) -> Iterator[TokenPiece | CaptionResult]:
        timings = {"load_image": request.image.load_seconds if request.image else 0.0}
        grammar = make_grammar(request.json_schema) if request.json_schema is not None else None
        prompt = self._prompts.tokenize(self._render(request), request.image)
        try:
            budget = self.n_ctx - prompt.n_tokens
            if budget < 1:
                raise ContextOverflow(
                    f"The prompt needs {prompt.n_tokens} tokens but the context holds "
                    f"{self.n_ctx}; lower maxPixels or shorten the prompt.",
                    parameter="maxPixels" if request.image else "prompt",
                )
            max_tokens = min(request.sampling.max_tokens, budget)
            # Reserve the cells generation will need too, so that other slots' caches are
            # evicted now rather than the KV pool running out mid-caption.
            slot, hits = self._prompts.slot_for(prompt, prompt.n_tokens + max_tokens)
            n_past = self._prompts.prefill(slot, prompt, timings, hits)
        finally:
            mtmd.mtmd_input_chunks_free(prompt.chunks)

        sampler = make_sampler(self._model, request.sampling, grammar)
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
