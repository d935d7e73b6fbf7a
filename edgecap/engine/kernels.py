"""Whether llama.cpp should repack the text model's weights on this CPU: measured, then cached.

llama.cpp's CPU backend can copy quantized weights into "extra buffers" laid out for its
repacked GEMM kernels (``use_extra_bufts``). Which is faster depends on the CPU *and* the
quantization: on a Zen 4 EPYC (AVX-512) a 512-token prefill of the bench preset takes 1.4 s of
CPU with Q4_K_M weights left alone and 2.6-3.0 s repacked (q4_K_8x8), while Q4_0 is faster
repacked (2.2-2.6 s vs 3.1-3.4 s); see docs/performance.md. Repacking also keeps a second copy
of those weights in memory (212 MB on the bench preset). So the choice is measured once per
model file, CPU and llama.cpp build — a short prefill of the real file each way, on one thread
and timed in CPU seconds so that other work on the machine does not decide it (wall-clock
timings of two spinning threads on a busy 2-core machine flipped the choice) — and remembered
in ``EDGECAP_HOME/kernels.json``.

On CPUs with AMX the extra buffers are never used: this llama.cpp's AMX matmul segfaults on
multi-token batches (llama.cpp #20824).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from gguf import GGMLQuantizationType
from llama_cpp._internals import LlamaContext, LlamaModel

from edgecap.config import Settings
from edgecap.engine import gguf_check
from edgecap.engine.cache import file_fingerprint
from edgecap.engine.hardware import detect_backend
from edgecap.fsutil import write_json_atomic

log = logging.getLogger(__name__)

PROBE_TOKENS = 256  # tokens of the timed prefill (at 128 the gap is within noise)
WARMUP_TOKENS = 16  # a first, untimed decode: allocations and page faults
MARGIN = 0.9  # leave llama.cpp's default (repack) unless the other way is 10% faster
UNPACKED_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
}


@dataclass(frozen=True)
class Choice:
    """Whether to use the extra buffers, and why (for logs and ``edgecap doctor``)."""

    extra_buffers: bool
    reason: str
    measured_s: dict[str, float] | None = None  # prefill seconds, "repacked" / "plain"


def choose(text: Path, settings: Settings) -> Choice:
    """The setting if given; off on AMX; else the cached or newly measured faster way."""
    known = _without_measuring(text, settings)
    if known is not None:
        return known
    choice = measure(text)
    _store(settings.home / "kernels.json", _key(text, detect_backend().system_info), choice)
    return choice


def pending(text: Path, settings: Settings) -> bool:
    """Whether :func:`choose` will measure (the first load of this file on this machine)."""
    return _without_measuring(text, settings) is None


def _without_measuring(text: Path, settings: Settings) -> Choice | None:
    if settings.extra_buffers is not None:
        return Choice(settings.extra_buffers, "set by extra_buffers in the configuration")
    backend = detect_backend()
    if "AMX_INT8" in backend.features:
        return Choice(False, "this CPU has AMX, whose repacked matmul crashes (llama.cpp #20824)")
    if backend.gpu_offload and settings.n_gpu_layers != 0:
        return Choice(True, "weights are offloaded to the GPU (llama.cpp's default)")
    header = gguf_check.read_header(text, "text model")
    if all(t.type in UNPACKED_TYPES for t in header.tensors.values()):
        return Choice(True, "no quantized weights to repack (llama.cpp's default)")
    known = _load(settings.home / "kernels.json").get(_key(text, backend.system_info))
    if known is None:
        return None
    return Choice(known["extra_buffers"], "measured earlier: " + known["reason"], known["s"])


def policy(settings: Settings) -> str:
    """What ``choose`` will do on this machine, for ``edgecap doctor`` (no model needed)."""
    if settings.extra_buffers is not None:
        return "on" if settings.extra_buffers else "off"
    if "AMX_INT8" in detect_backend().features:
        return "off"
    return "measured"


def remembered(settings: Settings) -> list[dict[str, Any]]:
    """The choices measured on this machine so far (``kernels.json``)."""
    return list(_load(settings.home / "kernels.json").values())


def measure(text: Path, clock: Callable[[], float] = time.process_time) -> Choice:
    """CPU time of a short one-thread prefill of ``text``, repacked and plain; see ``decide``."""
    log.info("measuring llama.cpp's weight layouts for %s on this CPU (once)", text.name)
    seconds = {
        "repacked": _prefill_seconds(text, True, clock),
        "plain": _prefill_seconds(text, False, clock),
    }
    choice = decide(seconds)
    log.info("extra CPU buffers %s: %s", "on" if choice.extra_buffers else "off", choice.reason)
    return choice


def decide(seconds: dict[str, float]) -> Choice:
    """Plain weights if their prefill beat the repacked one by ``MARGIN``, else repacked."""
    plain_wins = seconds["plain"] < MARGIN * seconds["repacked"]
    reason = (
        f"a {PROBE_TOKENS}-token prefill on one thread took {seconds['plain']:.2f} CPU s with "
        f"plain weights and {seconds['repacked']:.2f} repacked"
    )
    return Choice(not plain_wins, reason, {k: round(v, 4) for k, v in seconds.items()})


def _prefill_seconds(text: Path, extra: bool, clock: Callable[[], float]) -> float:
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.use_extra_bufts = extra
    model = LlamaModel(path_model=str(text), params=mparams, verbose=False)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = PROBE_TOKENS
    cparams.n_threads = cparams.n_threads_batch = 1
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = LlamaContext(model=model, params=cparams, verbose=False)
    batch = llama_cpp.llama_batch_init(PROBE_TOKENS, 0, 1)
    n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
    try:
        memory = llama_cpp.llama_get_memory(ctx.ctx)
        for i in range(PROBE_TOKENS):
            batch.token[i] = (i * 7919) % n_vocab
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = False
        seconds = 0.0
        for n_tokens in (WARMUP_TOKENS, PROBE_TOKENS):
            llama_cpp.llama_memory_seq_rm(memory, -1, -1, -1)
            batch.logits[n_tokens - 1] = True
            batch.n_tokens = n_tokens
            started = clock()
            if llama_cpp.llama_decode(ctx.ctx, batch) != 0:
                return float("inf")
            seconds = clock() - started
        return seconds
    finally:
        llama_cpp.llama_batch_free(batch)
        ctx.close()
        model.close()


def _key(text: Path, system_info: str) -> str:
    raw = "|".join((file_fingerprint(text), system_info, llama_cpp.__version__))
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _load(cache: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(cache: Path, key: str, choice: Choice) -> None:
    data = _load(cache)
    data[key] = {
        "extra_buffers": choice.extra_buffers,
        "reason": choice.reason,
        "s": choice.measured_s,
    }
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, data)
    except OSError as exc:  # a read-only home: measure again next time
        log.warning("could not remember the kernel choice in %s: %s", cache, exc)
