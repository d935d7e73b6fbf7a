"""Child side of the side-by-side benchmark: run one measurement, print one JSON object.

    python -m tools.bench_compare.runners '{"system": "edgecap", "text": ..., ...}'

Each system captions the same PNG (already at a size whose sides are multiples of 28, so no
system resizes it) with the same prompt, token budget and threads, then asks a second prompt
about the same image. The printed object carries the figures and the child's peak RSS.
"""

from __future__ import annotations

import base64
import json
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from edgecap.config import Settings
from edgecap.engine.engine import Engine
from edgecap.inputs.images import load_image
from edgecap.records import CaptionRequest, CaptionResult, ModelFiles, Sampling
from tools.bench_batching import PROMPTS, png, timed
from tools.bench_compare.service_runners import bench_home, folder_cli, server_concurrent

Spec = dict[str, Any]


def size_of(spec: Spec) -> tuple[int, int]:
    width, height = (int(v) for v in spec["size"].split("x"))
    return width, height


def _engine(spec: Spec, mmproj: str | None = None) -> tuple[Engine, Settings]:
    width, height = size_of(spec)
    settings = Settings(
        home=bench_home(spec, register=False),
        n_threads=spec["threads"],
        max_pixels=width * height,
    )
    files = ModelFiles(
        id="bench",
        text=Path(spec["text"]),
        mmproj=Path(mmproj or spec["mmproj"]),
        random_weights=True,
    )
    return Engine(files, settings), settings


def _request(image: Any, prompt: str, max_tokens: int) -> CaptionRequest:
    return CaptionRequest(
        image=image, prompt=prompt, sampling=Sampling(max_tokens=max_tokens, repeat_penalty=1.0)
    )


def edgecap_caption(spec: Spec) -> dict[str, Any]:
    """A caption of a new image, then a new prompt about the same image."""
    engine, settings = _engine(spec)
    with engine:
        image = load_image(png(spec["seed"], size_of(spec)), settings)
        first_s, first = timed(lambda: engine.caption(_request(image, PROMPTS[0], spec["tokens"])))
        again_s, again = timed(lambda: engine.caption(_request(image, PROMPTS[1], spec["tokens"])))
    return {
        "caption_s": first_s,
        "same_image_s": again_s,
        "image_tokens": first.image_tokens,
        "generated_tokens": [first.generated_tokens, again.generated_tokens],
        "stages_s": first.timings,
    }


def edgecap_encode(spec: Spec) -> dict[str, Any]:
    """Encode time of each projector in ``spec["mmprojs"]`` at each of ``spec["sizes"]``,
    alternating projectors at each size."""
    out: dict[str, Any] = {}
    for size in spec["sizes"]:
        for label, mmproj in spec["mmprojs"].items():
            engine, settings = _engine({**spec, "size": size}, mmproj)
            with engine:
                image = load_image(png(spec["seed"], size_of({"size": size})), settings)
                result = engine.caption(_request(image, PROMPTS[0], 1))
            out[f"{label}@{result.image_tokens}"] = result.timings["encode"]
            print(json.dumps({"partial": out}), file=sys.stderr, flush=True)
    return {"encode_s": out}


def edgecap_concurrent(spec: Spec) -> dict[str, Any]:
    """Four requests through the batching path with 1, 2 and 4 in flight: the same cached image
    with different prompts (``same_image``), or four different images (``different_images``)."""
    engine, settings = _engine(spec)
    out: dict[str, Any] = {}
    with engine:
        image = load_image(png(spec["seed"], size_of(spec)), settings)
        engine.caption(_request(image, "Warm the caches.", 1))
        for in_flight in spec["in_flight"]:
            if spec["mode"] == "same_image":
                requests = [_request(image, p, spec["tokens"]) for p in PROMPTS]
            else:
                seeds = [spec["seed"] + 100 * in_flight + i for i in range(len(PROMPTS))]
                images = [load_image(png(s, size_of(spec)), settings) for s in seeds]
                requests = [_request(im, PROMPTS[0], spec["tokens"]) for im in images]
            wall, results = timed(partial(_together, engine, requests, in_flight))
            made = sum(r.generated_tokens for r in results)
            out[str(in_flight)] = {"wall_s": wall, "tokens": made, "tokens_per_s": made / wall}
    return {"in_flight": out}


def _together(engine: Engine, requests: list[CaptionRequest], k: int) -> list[CaptionResult]:
    stream = engine.stream_many(iter(enumerate(requests)), in_flight=k)
    return [item for _, item in stream if isinstance(item, CaptionResult)]


def mtmd_caption(spec: Spec) -> dict[str, Any]:
    """llama-cpp-python's ``Llama`` + ``MTMDChatHandler``, defaults but for ``flash_attn``."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler

    handler = MTMDChatHandler(clip_model_path=spec["mmproj"], verbose=False)
    llm = Llama(
        model_path=spec["text"],
        chat_handler=handler,
        n_ctx=spec["n_ctx"],
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
        flash_attn=spec["flash"],
        verbose=False,
    )
    url = "data:image/png;base64," + base64.b64encode(png(spec["seed"], size_of(spec))).decode()

    def ask(prompt: str) -> Callable[[], Any]:
        content = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": prompt},
        ]
        messages: Any = [{"role": "user", "content": content}]
        return lambda: llm.create_chat_completion(
            messages=messages,
            max_tokens=spec["tokens"],
            temperature=0.0,
            repeat_penalty=1.0,
        )

    first_s, first = timed(ask(PROMPTS[0]))
    again_s, again = timed(ask(PROMPTS[1]))
    return {
        "caption_s": first_s,
        "same_image_s": again_s,
        "prompt_tokens": first["usage"]["prompt_tokens"],
        "generated_tokens": [
            first["usage"]["completion_tokens"],
            again["usage"]["completion_tokens"],
        ],
    }


RUNNERS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "edgecap": edgecap_caption,
    "mtmd": mtmd_caption,
    "encode": edgecap_encode,
    "concurrent": edgecap_concurrent,
    "server": server_concurrent,
    "folder": folder_cli,
}


def run(spec: Spec) -> dict[str, Any]:
    """Run ``spec`` in this process; the figures plus this process's peak RSS in MB."""
    runner: Callable[[Spec], dict[str, Any]]
    if spec["system"] == "transformers":
        from tools.bench_compare.hf_runner import transformers_caption

        runner = transformers_caption
    else:
        runner = RUNNERS[spec["system"]]
    started = time.perf_counter()
    figures = runner(spec)
    return {**figures, "total_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB. Not ``ru_maxrss``: Linux carries that
    over from the parent through fork and exec, so a child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
