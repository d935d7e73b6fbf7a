"""The API's own overhead: REST round trips against the engine's own compute, on the tiny model.

    python -m tools.bench --scenario rest-overhead [--workdir build/bench] [--samples 20]

Builds the ``tiny`` preset (cached in the workdir), serves it with ``edgecap serve`` in a child
process on a free loopback port, sends one warm-up caption and then ``--samples`` identical ones
over a keep-alive connection (as SDKs do), and prints p50 figures in milliseconds:

- ``round_trip``: what the client waited for, per request;
- ``engine``: the engine's own compute, read back from the result's cost (cost / cost_per_second);
- ``overhead``: round trip minus engine: HTTP, validation, image decode, the durable SQLite submit
  and finish, the engine-process round trip, waking the waiter.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from edgecap.config import Settings, load_settings
from edgecap.convert import convert
from edgecap.registry import Registry
from edgecap.tiny import make_checkpoint

TINY_ID = "edgecap-tiny-random"
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 120.0
MAX_TOKENS = 8


def tiny_home(workdir: Path) -> Path:
    """A home whose only (hence default) model is the tiny one, built on first use."""
    home = workdir / "tiny" / "home"
    checkpoint, gguf = workdir / "tiny" / "hf", workdir / "tiny" / "gguf"
    if not (checkpoint / "config.json").exists():
        make_checkpoint(checkpoint, "tiny", seed=0)
    existing = sorted(gguf.glob("*.gguf")) if gguf.exists() else []
    if len(existing) == 2:
        mmproj = next(p for p in existing if p.name.startswith("mmproj-"))
        text = next(p for p in existing if not p.name.startswith("mmproj-"))
    else:
        text, mmproj = convert(checkpoint, gguf, "f32", progress=False)
    Registry(Settings(home=home)).register_local(TINY_ID, text, mmproj, random_weights=True)
    return home


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    home: Path, port: int, threads: int | None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``edgecap serve`` in its own process group, once /healthz answers (or an error);
    ``env`` (default: this process's) plus ``EDGECAP_HOME``."""
    env = {**(os.environ if env is None else env), "EDGECAP_HOME": str(home)}
    if threads is not None:
        env["EDGECAP_N_THREADS"] = str(threads)
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecap", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"edgecap serve exited with status {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError(f"edgecap serve was not ready within {START_TIMEOUT_S:g} s")


def sample_photo() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 140, 90)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def caption_task(image: str) -> dict[str, Any]:
    return {
        "taskType": "caption",
        "taskUUID": str(uuid.uuid4()),
        "prompt": "Describe the picture.",
        "inputs": {"image": image},
        "maxTokens": MAX_TOKENS,
        "includeCost": True,
    }


def measure(url: str, samples: int, cost_per_second: float) -> dict[str, float]:
    image = sample_photo()
    round_trips, engine = [], []
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:  # keep-alive, as SDKs do
        client.post(url, json=[caption_task(image)]).raise_for_status()  # warm the caches
        for _ in range(samples):
            started = time.perf_counter()
            answer = client.post(url, json=[caption_task(image)])
            round_trips.append(time.perf_counter() - started)
            answer.raise_for_status()
            engine.append(answer.json()["data"][0]["cost"] / cost_per_second)
    return {
        "p50_round_trip_ms": statistics.median(round_trips) * 1000,
        "p50_engine_ms": statistics.median(engine) * 1000,
        "p50_overhead_ms": statistics.median(
            r - e for r, e in zip(round_trips, engine, strict=True)
        )
        * 1000,
    }


def rest_overhead(workdir: Path, samples: int, threads: int | None) -> dict[str, Any]:
    """The report of this scenario (see the module docstring)."""
    home, port = tiny_home(workdir), free_port()
    process = start_server(home, port, threads)
    try:
        figures = measure(f"http://127.0.0.1:{port}/v1", samples, load_settings().cost_per_second)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    return {
        "scenario": "rest-overhead",
        "model": TINY_ID,
        "samples": samples,
        "max_tokens": MAX_TOKENS,
        **{name: round(value, 1) for name, value in figures.items()},
    }
