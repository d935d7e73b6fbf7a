"""What one decode step costs with N sequences in flight: the bound on batched decoding.

    python tools/bench_steps.py TEXT.gguf [--rows 1,2,4,8,16] [--rounds 3] [--threads 2]

For each weight layout (plain, and llama.cpp's repacked "extra buffers") and each row count N,
N sequences that already hold ``--context`` tokens each decode one token together, in one
``llama_decode``; the median of ``--steps`` such steps is the step's cost. Layouts run in their
own child process (a model is loaded one way), interleaved round by round; the table gives the
fastest round's median, the cost per row, and the throughput against one row.

Batching N sequences pays when a step of N rows costs less than N steps of one. One row is bound
by reading the weights (memory bandwidth); N rows add N times the dot products, and which kernel
does them depends on N: llama.cpp's CPU backend uses per-row dot products (``vec_dot``) below 8
rows of a plain K-quant matrix and its tiled kernel from 8 (``ggml-cpu/tiled``; set
``GGML_CPU_TILED_MM=0`` to see the stock path there). Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAYOUTS = {"plain": False, "repacked": True}


def measure(
    text: Path, extra: bool, rows: list[int], threads: int, context: int, steps: int
) -> dict[int, float]:
    """Median seconds of one decode step with each row count (run in a child process)."""
    import llama_cpp
    from llama_cpp._internals import LlamaContext, LlamaModel

    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.use_extra_bufts = extra
    model = LlamaModel(path_model=str(text), params=mparams, verbose=False)
    n_seq = max(rows)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_seq * (context + steps * len(rows) + 8)
    cparams.n_batch = cparams.n_ubatch = max(context, n_seq)
    cparams.n_seq_max = n_seq
    cparams.kv_unified = True
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = LlamaContext(model=model, params=cparams, verbose=False)
    n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
    batch = llama_cpp.llama_batch_init(max(context, n_seq), 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(entries)
        if llama_cpp.llama_decode(ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    try:
        for seq in range(n_seq):
            decode([((i * 7919 + seq) % n_vocab, i, seq, i == context - 1) for i in range(context)])
        pos, seconds = context, {}
        for n in rows:
            times = []
            for _ in range(steps + 2):
                started = time.perf_counter()
                decode([((pos * 31 + seq) % n_vocab, pos, seq, True) for seq in range(n)])
                times.append(time.perf_counter() - started)
                pos += 1
            seconds[n] = statistics.median(times[2:])  # the first two warm the graph
        return seconds
    finally:
        llama_cpp.llama_batch_free(batch)
        ctx.close()
        model.close()


def table(results: dict[str, list[dict[int, float]]], rows: list[int]) -> str:
    lines = [
        "| layout | rows | step ms | ms per row | tokens/s × one row |",
        "|---|---|---|---|---|",
    ]
    for layout, rounds in results.items():
        best = {n: min(r[n] for r in rounds) for n in rows}
        for n in rows:
            gain = n * best[rows[0]] / best[n] if rows[0] == 1 else float("nan")
            lines.append(
                f"| {layout} | {n} | {best[n] * 1000:.1f} | {best[n] * 1000 / n:.1f} | {gain:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", type=Path, help="a text-model GGUF")
    parser.add_argument("--rows", default="1,2,4,8,16", help="sequences per step, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=256, help="tokens each sequence holds")
    parser.add_argument("--steps", type=int, default=10, help="steps measured per row count")
    parser.add_argument("--child", choices=sorted(LAYOUTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rows = sorted({int(n) for n in args.rows.split(",")})
    if args.child:
        seconds = measure(
            args.text, LAYOUTS[args.child], rows, args.threads, args.context, args.steps
        )
        print(json.dumps({str(n): s for n, s in seconds.items()}))
        return 0
    results: dict[str, list[dict[int, float]]] = {layout: [] for layout in LAYOUTS}
    for round_no in range(args.rounds):
        for layout in LAYOUTS:
            child = [
                sys.executable,
                __file__,
                str(args.text),
                "--rows",
                args.rows,
                "--child",
                layout,
                "--threads",
                str(args.threads),
                "--context",
                str(args.context),
                "--steps",
                str(args.steps),
            ]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            seconds = {int(n): s for n, s in json.loads(out.strip().splitlines()[-1]).items()}
            results[layout].append(seconds)
            print(
                f"round {round_no + 1} {layout}: "
                + ", ".join(f"{n}: {s * 1000:.1f} ms" for n, s in seconds.items()),
                file=sys.stderr,
            )
    print(table(results, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
