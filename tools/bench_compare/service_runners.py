"""Child side of the benchmark's end-to-end scenarios: the server over HTTP, a folder through the
CLI. Each runs ``edgecap`` as a user would (its own process, a home holding only the bench
model) and returns figures for :mod:`tools.bench_compare.runners`.

- ``server``: four chat completions (``POST /v1/chat/completions``, which reports token counts)
  sent with 1, 2 and 4 in flight: the same image with four prompts, or four different images;
- ``folder``: ``edgecap caption DIR --out FILE`` over a folder of new images (model load
  included, as a user waits for it), and the same folder again with ``--resume`` (nothing left).
"""

from __future__ import annotations

import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from edgecap.config import Settings
from edgecap.registry import Registry
from tools.bench_batching import PROMPTS, png
from tools.bench_rest import free_port, start_server

Spec = dict[str, Any]
MODEL = "bench"
REQUEST_TIMEOUT_S = 1800.0


def bench_home(spec: Spec, *, register: bool = True) -> Path:
    """A fresh home, whose only model is the bench preset's two files (registered, not copied)
    if ``register``; it starts with the bench's weight-layout record (``kernels.json``)."""
    home = Path(tempfile.mkdtemp(prefix="edgecap-bench-home-"))
    if register:
        registry = Registry(Settings(home=home))
        registry.register_local(
            MODEL, Path(spec["text"]), Path(spec["mmproj"]), random_weights=True
        )
    kernels = spec.get("kernels_record")
    if kernels and Path(kernels).exists():  # the weight-layout choice, measured once per bench
        (home / "kernels.json").write_bytes(Path(kernels).read_bytes())
    return home


def _env(spec: Spec, home: Path) -> dict[str, str]:
    width, height = (int(v) for v in spec["size"].split("x"))
    return {
        **os.environ,
        "EDGECAP_HOME": str(home),
        "EDGECAP_N_THREADS": str(spec["threads"]),
        "EDGECAP_MAX_PIXELS": str(width * height),
    }


def _chat(client: httpx.Client, url: str, image: bytes, prompt: str, tokens: int) -> int:
    content = [
        {"type": "image_url", "image_url": {"url": _data_url(image)}},
        {"type": "text", "text": prompt},
    ]
    answer = client.post(
        url,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": tokens,
            "temperature": 0,
        },
    )
    answer.raise_for_status()
    return int(answer.json()["usage"]["completion_tokens"])


def _data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def server_concurrent(spec: Spec) -> dict[str, Any]:
    """Throughput of four chat completions with 1, 2 and 4 in flight (see the module doc)."""
    width, height = (int(v) for v in spec["size"].split("x"))
    home = bench_home(spec)
    port = free_port()
    process = start_server(home, port, spec["threads"], _env(spec, home))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    out: dict[str, Any] = {}
    try:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            same = png(spec["seed"], (width, height))
            _chat(client, url, same, "Warm the caches.", 1)
            for in_flight in spec["in_flight"]:
                if spec["mode"] == "same_image":
                    work = [(same, p) for p in PROMPTS]
                else:
                    seeds = [spec["seed"] + 100 * in_flight + i for i in range(len(PROMPTS))]
                    work = [(png(s, (width, height)), PROMPTS[0]) for s in seeds]
                started = time.perf_counter()
                with ThreadPoolExecutor(in_flight) as pool:
                    made = sum(
                        pool.map(lambda w: _chat(client, url, w[0], w[1], spec["tokens"]), work)
                    )
                wall = time.perf_counter() - started
                out[str(in_flight)] = {"wall_s": wall, "tokens": made, "tokens_per_s": made / wall}
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"in_flight": out, "server_peak_rss_mb": children_peak_rss_mb()}


def folder_cli(spec: Spec) -> dict[str, Any]:
    """``edgecap caption DIR --out FILE`` over ``spec["images"]`` new images, then ``--resume``."""
    width, height = (int(v) for v in spec["size"].split("x"))
    home = bench_home(spec)
    work = Path(tempfile.mkdtemp(prefix="edgecap-bench-folder-"))
    folder = work / "images"
    folder.mkdir()
    for i in range(spec["images"]):
        (folder / f"{i:03d}.png").write_bytes(png(spec["seed"] * 1000 + i, (width, height)))
    out = work / "captions.jsonl"
    base = [sys.executable, "-m", "edgecap", "caption", str(folder), "--out", str(out)]
    base += ["--model", MODEL, "--max-tokens", str(spec["tokens"])]
    figures: dict[str, Any] = {}
    for label, extra in (("folder_s", []), ("resume_s", ["--resume"])):
        started = time.perf_counter()
        done = subprocess.run(
            base + extra, env=_env(spec, home), capture_output=True, text=True, check=False
        )
        figures[label] = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"edgecap caption exited {done.returncode}: {done.stderr[-300:]}")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    figures["images"] = spec["images"]
    figures["records"] = len(records)
    figures["s_per_image"] = figures["folder_s"] / spec["images"]
    figures["cli_peak_rss_mb"] = children_peak_rss_mb()
    return figures


def children_peak_rss_mb() -> float:
    """The largest peak RSS among the finished children (and theirs): the server's engine
    process, or the CLI run."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
