"""What the side-by-side benchmark runs, in which order, each in its own child process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Image budgets in tokens (one token = a 28x28 pixel patch group) and a size with exactly that
# many, sides multiples of 28 so no system resizes the image differently.
SIZES = {256: "448x448", 1024: "896x896", 2048: "1792x896"}
CAPTION_SYSTEMS: dict[str, dict[str, Any]] = {
    "edgecap": {"system": "edgecap"},
    "mtmd-default": {"system": "mtmd", "flash": False},
    "mtmd-flash": {"system": "mtmd", "flash": True},
    "transformers-f32": {"system": "transformers", "dtype": "float32"},
    "transformers-bf16": {"system": "transformers", "dtype": "bfloat16"},
}


@dataclass(frozen=True)
class Job:
    """One child run: ``name`` groups the runs of one measurement across rounds."""

    name: str
    spec: dict[str, Any]


def jobs(files: dict[str, str], args: Any) -> Iterator[Job]:
    """Round by round, every selected measurement once per round (interleaved)."""
    base = {
        "text": files["text"],
        "mmproj": files["mmproj"],
        "threads": args.threads,
        "n_ctx": 8192,
        "seed": 1,
        "kernels_record": files["kernels_record"],
    }
    for round_ in range(args.runs):
        for budget in args.budgets:
            for system in args.systems:
                yield Job(
                    f"{system}@{budget}",
                    {
                        **base,
                        **CAPTION_SYSTEMS[system],
                        "size": SIZES[budget],
                        "tokens": args.tokens,
                        "seed": 10 + round_,
                    },
                )
        if "encode" in args.extras:
            mmprojs = {"f16": files["mmproj_f16"], "bf16": files["mmproj_bf16"]}
            order = mmprojs if round_ % 2 == 0 else dict(reversed(mmprojs.items()))
            sizes = [SIZES[b] for b in args.encode_budgets]
            yield Job("encode", {**base, "system": "encode", "mmprojs": order, "sizes": sizes})
        for extra in ("concurrent", "server"):
            if extra not in args.extras:
                continue
            for mode, tokens in (("same_image", 128), ("different_images", 64)):
                yield Job(
                    f"{extra}-{mode}",
                    {
                        **base,
                        "system": extra,
                        "mode": mode,
                        "tokens": tokens,
                        "size": SIZES[256],
                        "in_flight": args.in_flight,
                        "seed": 20 + round_,
                    },
                )
        if "folder" in args.extras:
            folder = {"system": "folder", "images": 4, "tokens": args.tokens, "size": SIZES[256]}
            yield Job("folder", {**base, **folder, "seed": 30 + round_})


def run_job(job: Job, timeout: float, log: Path) -> dict[str, Any]:
    """Run ``job`` in a child process; its JSON figures, or an ``error`` on failure/timeout."""
    cmd = [sys.executable, "-m", "tools.bench_compare.runners", json.dumps(job.spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    with log.open("a", encoding="utf-8") as f:
        f.write(done.stderr[-4000:])
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures
