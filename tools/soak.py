"""Soak benchmark: run ``edgecap serve`` on the tiny model under the load test's mixed traffic for
a long time (default 30 minutes) and record the server's memory, open file descriptors and
request latency every few seconds; draw the curves to a PNG (matplotlib: ``pip install
'edgecap[bench]'``) and write the samples as JSON next to it.

    python -m tools.soak --minutes 30 --out docs/soak.png

Not part of CI. The tiny model is built in a temporary directory first (edgecap.tiny,
edgecap.convert); the server runs through the test suite's ServerProcess helper, so run it
from the checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from edgecap.convert import convert
from edgecap.records import ModelFiles
from edgecap.tiny import make_checkpoint
from tests.support.server_process import ServerProcess, register

SAMPLE_EVERY_S = 5.0
CLIENTS = 16  # concurrent clients, each sending one request after another


def png_b64() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


PNG_B64 = png_b64()


def tiny_model(work: Path) -> ModelFiles:
    checkpoint = make_checkpoint(work / "hf", "tiny", seed=0)
    text, mmproj = convert(checkpoint, work / "gguf", "f32", progress=False)
    return ModelFiles(id="edgecap-tiny-random", text=text, mmproj=mmproj, random_weights=True)


def request(index: int) -> list[dict[str, Any]] | bytes:
    kind = index % 5
    if kind in (0, 1):
        return [
            {
                "taskType": "caption",
                "taskUUID": str(uuid.uuid4()),
                "inputs": {"image": PNG_B64},
                "maxTokens": 2,
                "deliveryMethod": "sync",
            }
        ]
    if kind == 2:
        return [{"taskType": "ping", "ping": True}]
    if kind == 3:
        return b"[{broken"
    return [{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}]


async def client_loop(url: str, stop_at: float, latencies: list[float], errors: list[int]) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        index = 0
        while time.monotonic() < stop_at:
            body = request(index)
            index += 1
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            started = time.perf_counter()
            answer = await client.post(
                url, content=content, headers={"Content-Type": "application/json"}
            )
            latencies.append(time.perf_counter() - started)
            if answer.status_code >= 500:
                errors.append(answer.status_code)


async def sampler(
    server: ServerProcess, stop_at: float, latencies: list[float], samples: list[dict[str, Any]]
) -> None:
    started = time.monotonic()
    while time.monotonic() < stop_at:
        await asyncio.sleep(SAMPLE_EVERY_S)
        recent, latencies[:] = list(latencies), []
        status = Path(f"/proc/{server.process.pid}/status").read_text()  # type: ignore[union-attr]
        rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
        samples.append(
            {
                "t": time.monotonic() - started,
                "rss_mb": rss / 1024,
                "fds": server.open_fds(),
                "requests": len(recent),
                "p50_ms": statistics.median(recent) * 1000 if recent else None,
                "p99_ms": sorted(recent)[int(len(recent) * 0.99) - 1] * 1000 if recent else None,
            }
        )
        print(json.dumps(samples[-1]), flush=True)


def draw(samples: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    figure, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(minutes, [s["rss_mb"] for s in samples])
    axes[0].set_ylabel("server RSS (MB)")
    axes[1].plot(minutes, [s["fds"] for s in samples])
    axes[1].set_ylabel("open fds")
    axes[2].plot(minutes, [s["p50_ms"] for s in samples], label="p50")
    axes[2].plot(minutes, [s["p99_ms"] for s in samples], label="p99")
    axes[2].set_ylabel("latency (ms)")
    axes[2].set_xlabel("minutes")
    axes[2].legend()
    figure.suptitle("edgecap soak: tiny model, mixed valid/invalid REST traffic")
    figure.tight_layout()
    figure.savefig(out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("docs/soak.png"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgecap-soak-") as tmp:
        work = Path(tmp)
        register(work / "home", tiny_model(work))
        server = ServerProcess(work / "home", {"EDGECAP_N_THREADS": "2"}).start()
        latencies: list[float] = []
        samples: list[dict[str, Any]] = []
        errors: list[int] = []
        stop_at = time.monotonic() + args.minutes * 60

        async def run() -> None:
            await asyncio.gather(
                sampler(server, stop_at, latencies, samples),
                *(client_loop(server.url, stop_at, latencies, errors) for _ in range(CLIENTS)),
            )

        try:
            asyncio.run(run())
        finally:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"samples": samples, "5xx": len(errors)}))
    draw(samples, args.out)
    print(f"{len(samples)} samples, {len(errors)} 5xx; curves in {args.out}")
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
