"""Measure batched decoding: a lone caption, concurrent captions, a folder with two in flight.

    python tools/bench_batching.py --text T.gguf --mmproj M.gguf SCENARIO [--runs 3] ...

Scenarios (each prints one JSON line per run):

- ``lone``: a caption of a new image, then a new question about it, through ``Engine.caption``
  only, so the same file also runs against an older edgecap checkout (``PYTHONPATH=old``): the
  "a lone request must not get slower" check;
- ``same-image``: four prompts about one cached image, one after another vs all at once;
- ``different-images``: four new images, one after another vs all at once;
- ``folder``: ``caption_many`` over a folder with one image in flight vs two.

Weights may be random: this measures speed, not quality. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgecap.config import Settings
from edgecap.engine.engine import Engine
from edgecap.inputs.images import load_image
from edgecap.records import CaptionRequest, CaptionResult, LoadedImage, ModelFiles, Sampling

PROMPTS = ("Describe this image.", "What colours dominate?", "Count the objects.", "Any text?")


def png(seed: int, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        Image.fromarray(pixels).save(f.name)
        return Path(f.name).read_bytes()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def cpu_timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and process CPU seconds (CPU time is less disturbed by a busy machine)."""
    cpu = time.process_time()
    wall, value = timed(fn)
    return wall, time.process_time() - cpu, value


def tokens(results: list[CaptionResult]) -> int:
    return sum(r.generated_tokens for r in results)


def all_at_once(engine: Engine, requests: list[CaptionRequest]) -> list[CaptionResult]:
    out = engine.stream_many(iter(enumerate(requests)), in_flight=len(requests))
    return [item for _, item in out if isinstance(item, CaptionResult)]


def lone(engine: Engine, ctx: dict[str, Any], run: int) -> dict[str, Any]:
    image = ctx["image"](1000 + run)
    new_s, new_cpu, first = cpu_timed(lambda: engine.caption(ctx["request"](image, PROMPTS[0])))
    again_s, again_cpu, second = cpu_timed(
        lambda: engine.caption(ctx["request"](image, PROMPTS[1]))
    )
    return {
        "caption_s": round(new_s, 4),
        "same_image_s": round(again_s, 4),
        "caption_cpu_s": round(new_cpu, 4),
        "same_image_cpu_s": round(again_cpu, 4),
        "tokens": [first.generated_tokens, second.generated_tokens],
        "timings": {k: round(v, 4) for k, v in first.timings.items()},
    }


def same_image(engine: Engine, ctx: dict[str, Any], run: int) -> dict[str, Any]:
    image = ctx["image"](2000 + run)
    engine.caption(ctx["request"](image, "Warm the caches.", 1))
    requests = [ctx["request"](image, p) for p in PROMPTS]
    return compare(engine, requests, requests)


def different_images(engine: Engine, ctx: dict[str, Any], run: int) -> dict[str, Any]:
    one = [ctx["request"](ctx["image"](3000 + 10 * run + i), p) for i, p in enumerate(PROMPTS)]
    other = [ctx["request"](ctx["image"](5000 + 10 * run + i), p) for i, p in enumerate(PROMPTS)]
    return compare(engine, one, other)


def compare(
    engine: Engine, sequential: list[CaptionRequest], together: list[CaptionRequest]
) -> dict[str, Any]:
    seq_s, seq = timed(lambda: [engine.caption(r) for r in sequential])
    par_s, par = timed(lambda: all_at_once(engine, together))
    return {
        "one_at_a_time_s": round(seq_s, 3),
        "all_at_once_s": round(par_s, 3),
        "throughput_ratio": round((tokens(par) / par_s) / (tokens(seq) / seq_s), 3),
        "tokens": [tokens(seq), tokens(par)],
    }


def folder(engine: Engine, ctx: dict[str, Any], run: int) -> dict[str, Any]:
    from edgecap.batch import CaptionOptions, caption_many, find_images

    figures: dict[str, Any] = {}
    for in_flight in (1, 2) if run % 2 == 0 else (2, 1):  # alternate which goes first
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(ctx["folder_images"]):
                seed = 7000 + 100 * run + 10 * in_flight + i
                (Path(tmp) / f"{i}.png").write_bytes(png(seed, ctx["size"]))
            options = CaptionOptions(prompt=PROMPTS[0], sampling=ctx["sampling"])
            items = find_images([tmp])
            started = time.perf_counter()
            summary = caption_many(items, engine, ctx["settings"], options, in_flight=in_flight)
            wall = time.perf_counter() - started
            figures[f"in_flight_{in_flight}_s"] = round(wall, 3)
            figures[f"in_flight_{in_flight}_captioned"] = summary.captioned
    figures["speedup"] = round(figures["in_flight_1_s"] / figures["in_flight_2_s"], 3)
    return figures


SCENARIOS = {
    "lone": lone,
    "same-image": same_image,
    "different-images": different_images,
    "folder": folder,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--mmproj", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--size", default="448x448", help="image WxH")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--folder-images", type=int, default=4)
    args = parser.parse_args(argv)

    size = tuple(int(v) for v in args.size.split("x"))
    home = Path(tempfile.mkdtemp(prefix="edgecap-bench-batching-"))
    settings = Settings(home=home, n_threads=args.threads, max_pixels=size[0] * size[1])
    sampling = Sampling(max_tokens=args.max_tokens, repeat_penalty=1.0)

    def request(image: LoadedImage, prompt: str, max_tokens: int | None = None) -> CaptionRequest:
        s = sampling if max_tokens is None else Sampling(max_tokens=max_tokens)
        return CaptionRequest(image=image, prompt=prompt, sampling=s)

    ctx = {
        "image": lambda seed: load_image(png(seed, size), settings),  # type: ignore[arg-type]
        "request": request,
        "settings": settings,
        "sampling": sampling,
        "size": size,
        "folder_images": args.folder_images,
    }
    files = ModelFiles(id="bench", text=args.text, mmproj=args.mmproj, random_weights=True)
    with Engine(files, settings) as engine:
        lone(engine, ctx, -1)  # warm up: page the weights in, first-call costs
        for run in range(args.runs):
            figures = SCENARIOS[args.scenario](engine, ctx, run)
            print(json.dumps({"scenario": args.scenario, "run": run, **figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
