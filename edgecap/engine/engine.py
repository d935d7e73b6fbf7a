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

Several sequences share one context through slots and are decoded together by the
:class:`~edgecap.engine.scheduler.Scheduler` (continuous batching): ``stream_many`` runs several
requests at once in the calling thread; the worker process drives ``scheduler`` directly. The
engine is not thread-safe (neither is llama.cpp); calls are serialised by a lock.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from collections.abc import Iterator
from typing import Any, TypeVar

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
from llama_cpp._internals import LlamaContext, LlamaModel

from edgecap.config import PIXELS_PER_TOKEN, Settings
from edgecap.engine import gguf_check, kernels, llama_log, memory
from edgecap.engine.cache import EmbeddingCache, file_fingerprint
from edgecap.engine.hardware import physical_cores
from edgecap.engine.prefill import N_BATCH, PromptEvaluator
from edgecap.engine.prompt import ChatTemplate
from edgecap.engine.scheduler import Scheduler
from edgecap.errors import EdgecapError, InferenceError, ModelError
from edgecap.records import CaptionRequest, CaptionResult, ModelFiles, TokenPiece

K = TypeVar("K")
NOT_READY_POLL_S = 0.01  # how often an idle stream_many asks again for a request not ready

N_SLOTS = 4  # sequences sharing the context (each keeps its own prefix cache)
# Tokens per llama.cpp micro-batch. Its compute buffer holds logits for every token of one
# (152k floats each: 311 MB at 512, 156 MB at 256), and prefill is no slower at 256 (measured
# on the bench preset: 2.8 s vs 2.9 s of CPU for 1,024 tokens); batches of N_BATCH are split.
N_UBATCH = 256


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
        threads = settings.n_threads or physical_cores()
        self.n_ctx = min(settings.n_ctx, text_info.n_ctx_train or settings.n_ctx)

        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 999 if settings.n_gpu_layers < 0 else settings.n_gpu_layers
        self.kernels = kernels.choose(model.text, settings)
        mparams.use_extra_bufts = self.kernels.extra_buffers
        try:
            self._model = LlamaModel(path_model=str(model.text), params=mparams, verbose=False)
        except ValueError as exc:
            raise ModelError(
                f"llama.cpp could not load {model.text}: {llama_log.tail(3)}", parameter="model"
            ) from exc
        self._vocab = self._model.vocab
        memory.release_sparse_tensors(model.text)  # the embedding table is read by row

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = N_BATCH
        cparams.n_ubatch = N_UBATCH
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
        self.scheduler = Scheduler(
            model=self._model,
            ctx=self._ctx,
            prompts=self._prompts,
            render=self._render,
            model_id=self.model_id,
            n_ctx=self.n_ctx,
            n_slots=N_SLOTS,
        )

    # ------------------------------------------------------------------ public API

    def caption(self, request: CaptionRequest) -> CaptionResult:
        """Run ``stream`` to the end and return its result record."""
        for item in self.stream(request):
            if isinstance(item, CaptionResult):
                return item
        raise InferenceError("generation ended without a result")  # pragma: no cover

    def stream(self, request: CaptionRequest) -> Iterator[TokenPiece | CaptionResult]:
        """Yield text pieces as they are generated, then one ``CaptionResult``.

        Closing the generator early cancels the caption and frees its slot.
        """
        for _, item in self.stream_many(iter([(None, request)]), in_flight=1):
            if isinstance(item, EdgecapError):
                raise item
            yield item

    def stream_many(
        self, requests: Iterator[tuple[K, CaptionRequest] | None], *, in_flight: int = N_SLOTS
    ) -> Iterator[tuple[K, TokenPiece | CaptionResult | EdgecapError]]:
        """Caption ``(key, request)`` pairs, up to ``in_flight`` at once, decoded together.

        Yields ``(key, piece)`` as text streams and ``(key, result)`` or ``(key, error)`` once
        per request. The next request is taken from ``requests`` as soon as one is free, so
        its image encode and prefill overlap the others' decoding; ``requests`` may yield None
        for "none ready yet" (asked again after the next step, or shortly when idle). Closing
        the generator cancels whatever is still in flight.
        """
        in_flight = max(1, min(in_flight, N_SLOTS))
        scheduler = self.scheduler
        with self._lock:
            try:
                pending: bool | None = True
                while pending is not False or not scheduler.idle:
                    pending = True
                    while pending and scheduler.in_flight < in_flight:
                        pending = self._submit_next(requests)
                    if scheduler.idle and pending is None:
                        time.sleep(NOT_READY_POLL_S)
                    yield from scheduler.step()  # type: ignore[misc]
            finally:
                self._cancel_all()

    def _submit_next(self, requests: Iterator[tuple[Any, CaptionRequest] | None]) -> bool | None:
        """Submit the next request (a refused one is reported at the next step); None if the
        next one is not ready yet, False once ``requests`` is exhausted."""
        try:
            entry = next(requests)
        except StopIteration:
            return False
        if entry is None:
            return None
        key, request = entry
        try:
            self.scheduler.submit(key, request)
        except EdgecapError as exc:
            self.scheduler.report(key, exc)
        return True

    def _cancel_all(self) -> None:
        scheduler = self.scheduler
        for key in scheduler.in_flight_keys():
            scheduler.cancel(key)
        while not scheduler.idle:
            scheduler.step()

    def prompt_logits(
        self, request: CaptionRequest, *, raw_prompt: str | None = None
    ) -> np.ndarray:
        """Last-token logits after the prompt (for parity tests and tools), as float32.

        ``raw_prompt`` bypasses the chat template (use the image marker for the image).
        """
        with self._lock:
            text = raw_prompt if raw_prompt is not None else self._render(request)
            prompt = self._prompts.tokenize(text, request.image)
            reserved = self._prompts.reserve(prompt, prompt.n_tokens, reuse=False)
            if reserved is None:  # pragma: no cover - the lock keeps every slot idle here
                raise InferenceError("internal: no free slot")
            slot = reserved[0]
            try:
                self._prompts.prefill(slot, prompt, {})
                n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
                logits = llama_cpp.llama_get_logits_ith(self._ctx.ctx, -1)
                return np.ctypeslib.as_array(logits, shape=(n_vocab,)).copy()
            finally:
                slot.prefix_key = None  # keep nothing: raw prompts may not be chat prompts
                self._prompts.release(slot)
                mtmd.mtmd_input_chunks_free(prompt.chunks)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """The model's tokenization of ``text`` (no BOS), NFC-normalised as the reference does."""
        normalized = unicodedata.normalize("NFC", text).encode()
        return list(self._model.tokenize(normalized, add_bos=False, special=special))

    def close(self) -> None:
        if getattr(self, "scheduler", None) is not None:
            self.scheduler.close()
            self.scheduler = None  # type: ignore[assignment]
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

    # ------------------------------------------------------------------ helpers

    def _render(self, request: CaptionRequest) -> str:
        system = self.settings.system_prompt_for(request.system_prompt)
        return self._template.render(
            request.prompt,
            system_prompt=system,
            with_image=request.image is not None,
            history=request.history,
        )
