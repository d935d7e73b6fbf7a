"""Benchmarks. The default scenario, ``caption``: one caption on a synthetic checkpoint with the
real 7B layer widths. ``rest-overhead``: the API's own cost per request (tools/bench_rest.py).

    python tools/bench.py [--workdir build/bench] [--text-layers 2] [--vision-blocks 8]
                          [--text-type Q4_K_M] [--mmproj-type bf16] [--width 1036 --height 756]
    python tools/bench.py --scenario rest-overhead [--samples 20]

Builds the ``bench`` preset (real 7B widths, few layers) with edgecap.tiny, converts and
quantizes it with edgecap.convert (cached in --workdir), then captions one synthetic image twice
— the second time the same image with a new prompt, which the image cache should serve — and
prints per-stage timings as JSON. Weights are random: this measures speed, not quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgecap.config import Settings
from edgecap.convert import convert, quantize
from edgecap.engine.engine import Engine
from edgecap.inputs.images import load_image
from edgecap.records import CaptionRequest, ModelFiles, Sampling
from edgecap.tiny import make_checkpoint
from tools.bench_rest import rest_overhead


def build_model(workdir: Path, args: argparse.Namespace) -> ModelFiles:
    tag = f"bench-t{args.text_layers}-v{args.vision_blocks}"
    checkpoint = workdir / tag / "hf"
    gguf_dir = workdir / tag / "gguf"
    if not (checkpoint / "config.json").exists():
        make_checkpoint(
            checkpoint, "bench", text_layers=args.text_layers, vision_blocks=args.vision_blocks
        )
    text_src, _ = _converted(checkpoint, gguf_dir, "bf16")
    _, mmproj = _converted(checkpoint, gguf_dir, args.mmproj_type)
    text = gguf_dir / f"text-{args.text_type}.gguf"
    if not text.exists():
        quantize(text_src, text, args.text_type)
    return ModelFiles(id=tag, text=text, mmproj=mmproj, random_weights=True)


def _converted(checkpoint: Path, outdir: Path, outtype: str) -> tuple[Path, Path]:
    sub = outdir / outtype
    existing = sorted(sub.glob("*.gguf")) if sub.exists() else []
    if len(existing) == 2:
        mmproj = next(p for p in existing if p.name.startswith("mmproj-"))
        text = next(p for p in existing if not p.name.startswith("mmproj-"))
        return text, mmproj
    return convert(checkpoint, sub, outtype=outtype, name="bench", mmproj_type=outtype)


def synthetic_image(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    path = Path("/tmp/edgecap-bench.png")
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("build/bench"))
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--vision-blocks", type=int, default=8)
    parser.add_argument("--text-type", default="Q4_K_M")
    parser.add_argument("--mmproj-type", default="bf16", choices=["f16", "bf16", "f32", "q8_0"])
    parser.add_argument("--width", type=int, default=1036)
    parser.add_argument("--height", type=int, default=756)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scenario", choices=["caption", "rest-overhead"], default="caption")
    parser.add_argument("--samples", type=int, default=20, help="requests (rest-overhead)")
    args = parser.parse_args(argv)

    if args.scenario == "rest-overhead":
        report: dict[str, object] = rest_overhead(args.workdir, args.samples, args.threads)
    else:
        report = caption_report(args)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


def caption_report(args: argparse.Namespace) -> dict[str, object]:
    files = build_model(args.workdir, args)
    settings = Settings(
        home=args.workdir / "home", n_threads=args.threads, max_pixels=args.width * args.height
    )
    image = load_image(synthetic_image(args.width, args.height), settings)
    sampling = Sampling(max_tokens=args.max_tokens, repeat_penalty=1.0)
    load_started = time.perf_counter()
    with Engine(files, settings) as engine:
        load_s = time.perf_counter() - load_started
        runs = []
        for prompt in ("Describe this image.", "What colours dominate?"):
            started = time.perf_counter()
            result = engine.caption(CaptionRequest(image=image, prompt=prompt, sampling=sampling))
            runs.append(
                {
                    "prompt": prompt,
                    "wall_s": round(time.perf_counter() - started, 3),
                    "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
                    "image_tokens": result.image_tokens,
                    "prompt_tokens": result.prompt_tokens,
                    "generated_tokens": result.generated_tokens,
                    "image_cache_hit": result.image_cache_hit,
                    "prefix_cache_hit": result.prefix_cache_hit,
                }
            )
    return {
        "model": files.id,
        "text": f"{files.text.name} ({files.text.stat().st_size / 1e9:.2f} GB)",
        "mmproj": f"{files.mmproj.name} ({files.mmproj.stat().st_size / 1e9:.2f} GB)",
        "image": f"{image.width}x{image.height}",
        "load_s": round(load_s, 3),
        "runs": runs,
    }


if __name__ == "__main__":
    sys.exit(main())
