"""Continuous batching: several captions in flight on one llama.cpp context.

The :class:`Scheduler` owns the decode loop. Requests are submitted under a key and join
between steps; every :meth:`Scheduler.step` puts the next token of *every* generating sequence
into one ``llama_batch`` (each at its own position, in its own sequence slot), decodes once and
samples each sequence at its own batch index with its own sampler chain (grammar, penalties),
loop guard and length. One new sequence at a time is evaluated beside them:

- its text chunks ride in the same batch as the others' tokens, ``SHARED_CHUNK`` tokens per
  step while others generate (``N_BATCH`` when it is alone, as a lone request always was);
- its image is encoded in one step (the vision encoder cannot be split), then its embeddings
  are decoded in ``SHARED_CHUNK``-token batches with one decode step of the others after each
  (mtmd's post-decode callback), so a long prompt does not freeze them.

Positions come from the prompt's chunks (M-RoPE: after an image, text continues from mtmd's
n_past, not from the cell count), one counter per sequence. Sequences leave when they stop, hit
their length, loop, fail or are cancelled; their slot keeps "system prompt + image" for the next
question. Not thread-safe: one thread drives it (the engine's lock, or the worker's loop).
"""

from __future__ import annotations

import codecs
import ctypes
import json
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
from llama_cpp._internals import LlamaModel, LlamaSampler
from llama_cpp.llama_grammar import LlamaGrammar

from edgecap.engine.prefill import (
    N_BATCH,
    Prompt,
    PromptEvaluator,
    Slot,
    TokenBatch,
    is_image,
    text_tokens,
)
from edgecap.engine.sampling import LoopGuard, make_grammar, make_sampler
from edgecap.errors import ContextOverflow, EdgecapError, InferenceError
from edgecap.records import CaptionRequest, CaptionResult, FinishReason, TokenPiece

SHARED_CHUNK = 128  # prompt tokens evaluated per step while other sequences generate

Event = tuple[Hashable, TokenPiece | CaptionResult | EdgecapError]
State = Literal["prefill", "generate"]


@dataclass(eq=False)
class _Seq:
    """One request in flight: its prompt, where its evaluation is, what it generated."""

    key: Hashable
    request: CaptionRequest
    prompt: Prompt
    max_tokens: int
    grammar: LlamaGrammar | None
    timings: dict[str, float]
    state: State = "prefill"
    slot: Slot | None = None
    hits: dict[str, bool] = field(default_factory=dict)
    sampler: LlamaSampler | None = None
    chunk: int = 0  # next prompt chunk to evaluate
    offset: int = 0  # tokens of that text chunk already evaluated
    n_past: int = 0  # next position
    logits_at: int = -1  # batch index of its logits in the last decode
    next_token: int = -1  # sampled, to be decoded in the next step
    embd: np.ndarray | None = None  # the image's embeddings, between encode and decode
    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    started: float = field(default_factory=time.perf_counter)


class Scheduler:
    """Sequences in flight on one context; see the module docstring."""

    def __init__(
        self,
        *,
        model: LlamaModel,
        ctx: Any,
        prompts: PromptEvaluator,
        render: Callable[[CaptionRequest], str],
        model_id: str,
        n_ctx: int,
        n_slots: int,
    ) -> None:
        self._model = model
        self._ctx = ctx  # llama_cpp._internals.LlamaContext
        self._vocab = model.vocab
        self._prompts = prompts
        self._render = render
        self.model_id = model_id
        self.n_ctx = n_ctx
        self.n_slots = n_slots
        self._loop_guard = LoopGuard()
        self._batch = TokenBatch(N_BATCH)
        self._pending: deque[_Seq] = deque()
        self._active: list[_Seq] = []
        self._cancelled: set[Hashable] = set()
        self._failure: BaseException | None = None
        self._events: list[Event] = []
        self._refused: list[Event] = []
        # Keep the ctypes callback alive as long as the scheduler: C holds a raw pointer to it.
        self._between = mtmd.mtmd_helper_post_decode_callback(self._between_image_batches)
        # For tests and tools: called with (key, raw logits, the token sampled from them).
        self.trace: Callable[[Hashable, np.ndarray, int], None] | None = None

    # ------------------------------------------------------------------ public

    @property
    def idle(self) -> bool:
        """Nothing pending or in flight (and no refusal left to report)."""
        return not self._pending and not self._active and not self._refused

    @property
    def in_flight(self) -> int:
        """Requests pending or in flight."""
        return len(self._pending) + len(self._active)

    @property
    def busy_slots(self) -> int:
        """Sequence slots held by requests in flight (a finished one frees its slot)."""
        return self._prompts.busy_slots()

    def submit(self, key: Hashable, request: CaptionRequest) -> None:
        """Queue a request; it joins at the next step. Raises for a request that cannot run
        (a schema without a grammar, a prompt longer than the context)."""
        grammar = make_grammar(request.json_schema) if request.json_schema is not None else None
        prompt = self._prompts.tokenize(self._render(request), request.image)
        budget = self.n_ctx - prompt.n_tokens
        if budget < 1:
            mtmd.mtmd_input_chunks_free(prompt.chunks)
            raise ContextOverflow(
                f"The prompt needs {prompt.n_tokens} tokens but the context holds "
                f"{self.n_ctx}; lower maxPixels or shorten the prompt.",
                parameter="maxPixels" if request.image else "prompt",
            )
        timings = {"load_image": request.image.load_seconds if request.image else 0.0}
        max_tokens = min(request.sampling.max_tokens, budget)
        self._pending.append(_Seq(key, request, prompt, max_tokens, grammar, timings))

    def report(self, key: Hashable, error: EdgecapError) -> None:
        """Deliver ``error`` for ``key`` at the next step (a request :meth:`submit` refused)."""
        self._refused.append((key, error))

    def in_flight_keys(self) -> list[Hashable]:
        """The keys of every request pending or in flight."""
        return [seq.key for seq in [*self._pending, *self._active]]

    def cancel(self, key: Hashable) -> None:
        """Stop that sequence at the next step (its slot is freed, it reports ``cancelled``)."""
        self._cancelled.add(key)

    def step(self) -> list[Event]:
        """Advance every sequence by one token (and the newest one's prompt by one piece)."""
        self._events = events = self._refused
        self._refused = []
        self._reap_cancelled()
        self._admit()
        prefilling = next((s for s in self._active if s.state == "prefill"), None)
        try:
            if prefilling is not None and self._at_image(prefilling):
                self._decode_step(None)
                self._image_step(prefilling)
            else:
                self._decode_step(prefilling)
        except EdgecapError as exc:  # the encoder or the image decode failed
            if prefilling is not None:
                self._fail([prefilling], exc)
        return events

    def close(self) -> None:
        for seq in [*self._pending, *self._active]:
            self._drop(seq)
        self._pending.clear()
        self._active.clear()
        self._batch.close()

    # ------------------------------------------------------------------ joining and leaving

    def _admit(self) -> None:
        """Move pending requests into free slots, in order, while they fit. A request whose
        image another sequence is still evaluating waits for it, then shares its KV cells."""
        for seq in list(self._pending):
            if len(self._active) >= self.n_slots:
                return
            if self._image_in_progress(seq.prompt.prefix_key):
                continue
            got = self._prompts.reserve(seq.prompt, seq.prompt.n_tokens + seq.max_tokens)
            if got is None:
                if not self._active:  # cannot happen: alone, a request always fits
                    self._pending.remove(seq)
                    self._fail([seq], InferenceError("internal: no room for a lone request"))
                    continue
                return
            self._pending.remove(seq)
            seq.slot, seq.hits = got
            if seq.hits.get("prefix"):
                seq.chunk = (seq.prompt.image_index or 0) + 1
                seq.n_past = seq.slot.prefix_pos
            seq.sampler = make_sampler(self._model, seq.request.sampling, seq.grammar)
            seq.timings["encode"] = 0.0
            seq.started = time.perf_counter()
            self._active.append(seq)

    def _image_in_progress(self, prefix_key: str | None) -> bool:
        return prefix_key is not None and any(
            s.prompt.prefix_key == prefix_key
            and s.state == "prefill"
            and s.chunk <= (s.prompt.image_index or 0)
            for s in self._active
        )

    def _reap_cancelled(self) -> None:
        if not self._cancelled:
            return
        for seq in [*self._pending, *self._active]:
            if seq.key in self._cancelled:
                self._finish(seq, "cancelled")
        self._cancelled.clear()

    def _finish(self, seq: _Seq, finish: FinishReason) -> None:
        """Report the sequence's result (or its JSON error) and free what it held."""
        if seq.state == "generate":
            seq.timings["generate"] = time.perf_counter() - seq.started
        else:
            seq.timings.setdefault("prefill", 0.0)
            seq.timings.setdefault("generate", 0.0)
        text = "".join(seq.pieces) + seq.decoder.decode(b"", final=True)
        if finish == "loop":
            cut = self._loop_guard.loop_start(seq.tokens) or len(seq.tokens)
            text = self._model.detokenize(seq.tokens[:cut]).decode("utf-8", "replace")
        text = text.strip()
        self._drop(seq)
        try:
            if seq.request.json_schema is not None and finish != "cancelled":
                check_json(text, seq.request.json_schema, finish)
        except EdgecapError as exc:
            self._events.append((seq.key, exc))
            return
        image = seq.request.image
        result = CaptionResult(
            text=text,
            finish_reason=finish,
            prompt_tokens=seq.prompt.n_tokens,
            image_tokens=image.tokens if image else 0,
            generated_tokens=len(seq.tokens),
            timings=seq.timings,
            model=self.model_id,
            image_cache_hit=seq.hits.get("image", False),
            prefix_cache_hit=seq.hits.get("prefix", False),
        )
        self._events.append((seq.key, result))

    def _fail(self, seqs: list[_Seq], exc: EdgecapError) -> None:
        """Report ``exc`` for these sequences; their KV cache is not trusted any more."""
        for seq in seqs:
            if seq.slot is not None:
                seq.slot.prefix_key = None
            self._drop(seq)
            self._events.append((seq.key, exc))

    def _drop(self, seq: _Seq) -> None:
        if seq in self._active:
            self._active.remove(seq)
        elif seq in self._pending:
            self._pending.remove(seq)
        if seq.slot is not None:
            if seq.state == "prefill" and seq.chunk <= (seq.prompt.image_index or 0):
                seq.slot.prefix_key = None  # its image never finished: nothing to keep
            self._prompts.release(seq.slot)
            seq.slot = None
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        if seq.prompt.chunks is not None:
            mtmd.mtmd_input_chunks_free(seq.prompt.chunks)
            seq.prompt.chunks = None

    # ------------------------------------------------------------------ stepping

    def _at_image(self, seq: _Seq) -> bool:
        if seq.chunk >= mtmd.mtmd_input_chunks_size(seq.prompt.chunks):
            return False
        return is_image(mtmd.mtmd_input_chunks_get(seq.prompt.chunks, seq.chunk))

    def _generating(self) -> list[_Seq]:
        return [s for s in self._active if s.state == "generate"]

    def _decode_step(self, prefilling: _Seq | None) -> None:
        """One batch: the next token of every generating sequence, plus a piece of text
        prompt of ``prefilling``; then sample each of them at its batch index."""
        batch = self._batch
        batch.clear()
        generating = self._generating()
        for seq in generating:
            assert seq.slot is not None
            seq.logits_at = batch.add(seq.next_token, seq.n_past, seq.slot.seq_id, True)
        fed = 0
        if prefilling is not None:
            room = N_BATCH - batch.n if not generating else min(SHARED_CHUNK, N_BATCH - batch.n)
            fed = self._feed_prompt(prefilling, room)
        if batch.n == 0:
            return
        try:
            self._prompts.decode(batch)
        except EdgecapError as exc:
            self._fail([*generating, *([prefilling] if prefilling is not None else [])], exc)
            return
        for seq in generating:
            assert seq.slot is not None
            seq.n_past += 1
            seq.slot.cells += 1
            self._sample(seq)
        if prefilling is not None and prefilling.slot is not None:
            prefilling.slot.cells += fed
            if prefilling.logits_at >= 0:  # its prompt is complete
                self._start_generating(prefilling)

    def _feed_prompt(self, seq: _Seq, room: int) -> int:
        """Add up to ``room`` text tokens of the prompt to the batch (stopping at an image)."""
        assert seq.slot is not None
        seq.logits_at = -1
        fed = 0
        n_chunks = mtmd.mtmd_input_chunks_size(seq.prompt.chunks)
        while fed < room and seq.chunk < n_chunks and not self._at_image(seq):
            tokens = text_tokens(mtmd.mtmd_input_chunks_get(seq.prompt.chunks, seq.chunk))
            take = tokens[seq.offset : seq.offset + room - fed]
            for token in take:
                seq.offset += 1
                last = seq.chunk == n_chunks - 1 and seq.offset == len(tokens)
                index = self._batch.add(int(token), seq.n_past, seq.slot.seq_id, last)
                seq.n_past += 1
                if last:
                    seq.logits_at = index
            fed += len(take)
            if seq.offset >= len(tokens):
                seq.chunk, seq.offset = seq.chunk + 1, 0
        return fed

    def _image_step(self, seq: _Seq) -> None:
        """Encode the image (one step), or decode its embeddings with the others stepping
        between batches."""
        assert seq.slot is not None
        chunk = mtmd.mtmd_input_chunks_get(seq.prompt.chunks, seq.chunk)
        if seq.embd is None:
            seq.embd = self._prompts.image_embedding(
                chunk, seq.prompt.image_key, seq.timings, seq.hits
            )
            if self._generating() and not seq.hits.get("image"):
                return  # the encode took a while: let the others step before the decode
        shared = bool(self._generating())
        self._failure = None
        try:
            seq.n_past = self._prompts.decode_image(
                seq.slot,
                seq.prompt,
                chunk,
                seq.embd,
                seq.n_past,
                SHARED_CHUNK if shared else N_BATCH,
                self._between if shared else mtmd.mtmd_helper_post_decode_callback(),
            )
        finally:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        seq.embd = None
        seq.chunk += 1

    def _between_image_batches(self, _view: Any, _user_data: Any) -> int:
        """mtmd's post-decode callback: one decode step of the generating sequences."""
        try:
            self._decode_step(None)
        except BaseException as exc:  # never let an exception unwind through C
            self._failure = exc
            return 1
        return 0

    # ------------------------------------------------------------------ sampling

    def _start_generating(self, seq: _Seq) -> None:
        now = time.perf_counter()
        seq.timings["prefill"] = now - seq.started - seq.timings["encode"]
        seq.state, seq.started = "generate", now
        self._sample(seq)

    def _sample(self, seq: _Seq) -> None:
        """Sample the sequence's next token at its batch index; finish it if it is done."""
        assert seq.sampler is not None
        token = seq.sampler.sample(self._ctx, seq.logits_at)
        if self.trace is not None:
            n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            logits = llama_cpp.llama_get_logits_ith(self._ctx.ctx, seq.logits_at)
            self.trace(seq.key, np.ctypeslib.as_array(logits, shape=(n_vocab,)).copy(), token)
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        seq.tokens.append(token)
        piece = seq.decoder.decode(self._token_bytes(token))
        seq.pieces.append(piece)
        if piece:
            self._events.append((seq.key, TokenPiece(piece)))
        if self._loop_guard.loop_start(seq.tokens) is not None:
            self._finish(seq, "loop")
        elif len(seq.tokens) >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _token_bytes(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # buffer too small: -n is the size needed
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]


def check_json(text: str, schema: dict[str, Any], finish: FinishReason) -> None:
    """Raise :class:`InferenceError` unless ``text`` is JSON matching ``schema``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (raise maxTokens)" if finish == "length" else ""
        raise InferenceError(f"the output is not complete JSON{hint}: {exc}") from exc
    if schema:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            raise InferenceError(f"the output does not match the schema: {exc.message}") from exc
