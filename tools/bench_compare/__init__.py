"""Side-by-side benchmark: edgecap's engine against llama-cpp-python's ``MTMDChatHandler`` and
transformers on the same files, the same image after resize, the same token budget and threads.

    python -m tools.bench_compare [--runs 3] [--budgets 256,1024] [--only edgecap,mtmd,...]

Every measurement runs in its own child process (``tools.bench_compare.runners``) so its peak
RSS is its own; runs are interleaved round by round so a busy machine slows every system alike.
Results go to docs/benchmarks.json, docs/benchmarks.md and docs/benchmarks.png.
"""
