"""Four captions sent at once through the real server run batched and answer as they do alone.

The real uvicorn server, the real TaskService with ``parallel=4`` and the real tiny model in the
engine process. Batching may move logits by a little (see tests/test_scheduler.py: at most
~0.01 measured, 0.03 allowed), which can flip a greedy choice only where two tokens are nearly
tied. So the test first runs each request alone in-process and caps ``maxTokens`` before the
first step whose (repetition-penalised) top-2 margin is below ``MARGIN``; within that many
tokens the texts must be identical, batched or not.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecap.config import Settings
from edgecap.engine.engine import Engine
from edgecap.engine.sampling import PENALTY_LAST_N
from edgecap.inputs.images import load_image
from edgecap.records import CaptionRequest, CaptionResult, ModelFiles, Sampling
from edgecap.runtime.worker import DefaultEngineFactory, Worker, WorkItem
from tests.support.api import api_settings, install_model, live_server, new_uuid, post
from tests.support.images import data_uri
from tests.support.waiting import wait_until

MARGIN = 0.1  # > 3x the largest logit change batching caused on this model
MOST_TOKENS = 12
PROMPTS = ("Describe the picture.", "What is in it?", "Name the colours.", "Any text?")


def noise_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def penalised(logits: np.ndarray, history: list[int], penalty: float) -> np.ndarray:
    """llama.cpp's repetition penalty over the last tokens generated."""
    out = logits.copy()
    for token in set(history[-PENALTY_LAST_N:]):
        out[token] = out[token] / penalty if out[token] > 0 else out[token] * penalty
    return out


def safe_length(engine: Engine, request: CaptionRequest) -> int:
    """Tokens before the lone run's first near-tie (at least 2, at most MOST_TOKENS)."""
    steps: list[tuple[np.ndarray, int]] = []
    engine.scheduler.trace = lambda _key, logits, token: steps.append((logits, token))
    engine.caption(request)
    history: list[int] = []
    for i, (logits, token) in enumerate(steps):
        top2 = np.sort(penalised(logits, history, request.sampling.repeat_penalty))[-2:]
        if top2[1] - top2[0] < MARGIN:
            return max(i, 2)
        history.append(token)
    return MOST_TOKENS


@pytest.mark.slow
def test_four_concurrent_requests_succeed_with_their_lone_text(
    tmp_path: Path, tiny_model_files: ModelFiles
) -> None:
    settings = api_settings(tmp_path / "home", n_threads=2, parallel=4)
    pngs = [noise_png(seed) for seed in range(4)]
    with Engine(tiny_model_files, Settings(home=tmp_path / "probe")) as engine:
        lengths = []
        for png, prompt in zip(pngs, PROMPTS, strict=True):
            image = load_image(png, settings)
            sampling = Sampling(max_tokens=MOST_TOKENS)
            lengths.append(safe_length(engine, CaptionRequest(image, prompt, sampling=sampling)))
    tasks = [
        {
            "taskType": "caption",
            "model": "runware:152@2",
            "inputs": {"image": data_uri(png)},
            "prompt": prompt,
            "maxTokens": n,
        }
        for png, prompt, n in zip(pngs, PROMPTS, lengths, strict=True)
    ]

    def send(task: dict[str, object]) -> str:
        answer = post(server, [{**task, "taskUUID": new_uuid()}])
        assert answer.status_code == 200, answer.text
        (item,) = answer.json()["data"]
        assert item["status"] == "success"
        return str(item["text"])

    with live_server(settings, None, install_model(settings, tiny_model_files)) as server:
        server.wait_ready()
        one_by_one = [send(task) for task in tasks]
        with ThreadPoolExecutor(4) as pool:
            at_once = list(pool.map(send, tasks))
        stats = server.service.stats()
    assert at_once == one_by_one
    assert all(text for text in one_by_one)
    assert stats["tasks"]["success"] == 8


@pytest.mark.slow
def test_the_worker_streams_tasks_together_and_cancels_one(
    tmp_path: Path, tiny_model_files: ModelFiles
) -> None:
    settings = api_settings(tmp_path / "home", n_threads=2)
    install_model(settings, tiny_model_files)
    image = load_image(noise_png(7), settings)
    worker = Worker(DefaultEngineFactory(settings))
    worker.start()
    pieces: list[str] = []
    results: dict[str, CaptionResult] = {}

    def run(uuid: str, max_tokens: int) -> None:
        request = CaptionRequest(image, uuid, sampling=Sampling(max_tokens=max_tokens))
        item = WorkItem(uuid, None, request)
        results[uuid] = worker.run(item, on_piece=lambda _text: pieces.append(uuid))

    threads = [threading.Thread(target=run, args=(uuid, n)) for uuid, n in (("a", 16), ("b", 400))]
    try:
        for thread in threads:
            thread.start()

        def both_streaming() -> bool:
            assert all(t.is_alive() for t in threads), "a task ended before both streamed"
            return "b" in pieces and pieces.count("a") >= 2

        wait_until(both_streaming, "both tasks to stream", timeout=300)
        worker.cancel("b")
        for thread in threads:
            thread.join(300)
            assert not thread.is_alive()
    finally:
        worker.stop()
    assert results["b"].finish_reason == "cancelled"
    assert results["b"].generated_tokens < 400
    assert results["a"].generated_tokens == 16 or results["a"].finish_reason != "length"
    # Decoded together: b's pieces came between a's, not after all of them.
    first_b, last_a = pieces.index("b"), len(pieces) - 1 - pieces[::-1].index("a")
    assert first_b < last_a


@pytest.mark.parametrize("parallel", [0, 5])
def test_parallel_is_bounded_by_the_engine_slots(tmp_path: Path, parallel: int) -> None:
    with pytest.raises(ValueError, match="parallel"):
        Settings(home=tmp_path, parallel=parallel)
