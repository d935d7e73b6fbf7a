"""Token sampling through llama.cpp's sampler chain, and the repetition-loop guard."""

from __future__ import annotations

import json
from typing import Any

from llama_cpp._internals import LlamaModel, LlamaSampler
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from edgecap.errors import InvalidParameter
from edgecap.records import Sampling

PENALTY_LAST_N = 64


def make_grammar(json_schema: dict[str, Any]) -> LlamaGrammar:
    """A GBNF grammar for ``json_schema``; ``{}`` means any JSON value."""
    try:
        if not json_schema:
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return LlamaGrammar.from_json_schema(json.dumps(json_schema), verbose=False)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidParameter(
            f"The JSON schema cannot be turned into a grammar: {exc}. "
            "Use a plain object schema (type/properties/required/enum/items).",
            parameter="jsonSchema",
        ) from exc


def make_sampler(
    model: LlamaModel, sampling: Sampling, grammar: LlamaGrammar | None = None
) -> LlamaSampler:
    """The chain: grammar → repetition penalty → top-k → top-p → min-p → temperature → pick."""
    sampler = LlamaSampler()
    if grammar is not None:
        sampler.add_grammar(model, grammar)
    if sampling.repeat_penalty != 1.0:
        sampler.add_penalties(model.n_vocab(), PENALTY_LAST_N, sampling.repeat_penalty, 0.0, 0.0)
    if sampling.temperature <= 0.0:
        sampler.add_greedy()
        return sampler
    if sampling.top_k > 0:
        sampler.add_top_k(sampling.top_k)
    if sampling.top_p < 1.0:
        sampler.add_top_p(sampling.top_p, 1)
    if sampling.min_p > 0.0:
        sampler.add_min_p(sampling.min_p, 1)
    sampler.add_temp(sampling.temperature)
    sampler.add_dist(sampling.seed & 0xFFFFFFFF)
    return sampler


class LoopGuard:
    """Detects generation stuck in a loop: the tail of the output repeating one short cycle.

    A cycle of ``p`` tokens repeated until it spans at least ``min_span`` tokens (and at least
    ``min_repeats`` times) counts as a loop. Qwen2.5-VL is known to do this on some images.
    """

    def __init__(self, max_period: int = 48, min_span: int = 32, min_repeats: int = 4) -> None:
        self.max_period = max_period
        self.min_span = min_span
        self.min_repeats = min_repeats

    def loop_start(self, tokens: list[int]) -> int | None:
        """Index where the loop's second repetition begins (cut there), or None."""
        n = len(tokens)
        for period in range(1, self.max_period + 1):
            span = max(self.min_span, period * self.min_repeats)
            if span > n:
                break
            tail = tokens[n - span :]
            if all(tail[i] == tail[i + period] for i in range(span - period)):
                # Walk back to the earliest start of the periodic run, keep one cycle.
                start = n - span
                while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
                    start -= 1
                return start + period
        return None
