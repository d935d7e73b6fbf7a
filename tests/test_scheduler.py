"""Batched decoding on the tiny model (real llama.cpp): several sequences in one llama_batch.

The reference for every batched sequence is the same request run alone, compared token by token
on the logits (teacher-forced while the two runs' tokens agree).

Tolerance: llama.cpp's results depend slightly on what else is in the batch. The KV cache is f16
and the CPU flash-attention and matmul kernels accumulate in a different order when a ubatch
holds several sequences' tokens (or a joining sequence's prompt), so logits move by about f16's
epsilon times their size: on the tiny model (|logit| ~ 5) we measured at most 0.0095. We allow
``TOL`` = 0.03 (three times that, 0.6% of the logit scale). Greedy tokens are therefore equal
except where the lone run's two best tokens are within the noise: a run may only diverge at a
step whose top-2 margin is below ``2 * TOL``, and this is asserted. Where no such near-tie
occurs, the texts are asserted identical.

Images of 192 tokens exceed the scheduler's shared prefill chunk (128), so a joining sequence's
image decode is interleaved with the others' decode steps.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from edgecap.batch import CaptionOptions, caption_many, find_images
from edgecap.config import Settings
from edgecap.engine.engine import Engine
from edgecap.engine.scheduler import SHARED_CHUNK
from edgecap.errors import ContextOverflow
from edgecap.inputs.images import load_image
from edgecap.records import (
    CaptionRequest,
    CaptionResult,
    LoadedImage,
    ModelFiles,
    Sampling,
    TokenPiece,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"type": "string", "enum": ["red", "green"]},
        "n": {"type": "integer"},
    },
    "required": ["colour", "n"],
}


def picture(seed: int, width: int = 336, height: int = 448) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("scheduler-home"))


@pytest.fixture(scope="module")
def engine(tiny_model_files: ModelFiles, settings: Settings) -> Iterator[Engine]:
    with Engine(tiny_model_files, settings) as eng:
        yield eng


@pytest.fixture(scope="module")
def images(settings: Settings) -> list[LoadedImage]:
    loaded = [load_image(picture(seed), settings) for seed in range(4)]
    assert all(image.tokens > SHARED_CHUNK for image in loaded)
    return loaded


def ask(
    image: LoadedImage | None, prompt: str, max_tokens: int = 20, **kw: object
) -> CaptionRequest:
    sampling = Sampling(max_tokens=max_tokens, repeat_penalty=1.0)
    return CaptionRequest(image=image, prompt=prompt, sampling=sampling, **kw)  # type: ignore[arg-type]


TOL = 0.03


@dataclass
class Run:
    result: CaptionResult
    steps: list[tuple[np.ndarray, int]]  # (raw logits, sampled token) per generated token


class Trace:
    """Logits and sampled tokens per key, recorded by the scheduler's trace hook."""

    def __init__(self, engine: Engine) -> None:
        self.steps: dict[object, list[tuple[np.ndarray, int]]] = defaultdict(list)
        engine.scheduler.trace = self.record

    def record(self, key: object, logits: np.ndarray, token: int) -> None:
        self.steps[key].append((logits, token))


def alone(engine: Engine, requests: list[CaptionRequest]) -> list[Run]:
    """Each request run by itself."""
    trace = Trace(engine)
    runs = []
    for request in requests:
        trace.steps.clear()
        runs.append(Run(engine.caption(request), list(trace.steps[None])))
    return runs


def together(
    engine: Engine, requests: list[CaptionRequest], in_flight: int = 4
) -> tuple[list[Run], list[tuple[int, str]]]:
    """The requests batched: their runs, and the order of events (key, kind)."""
    trace = Trace(engine)
    results: dict[int, CaptionResult] = {}
    order: list[tuple[int, str]] = []
    for key, item in engine.stream_many(iter(enumerate(requests)), in_flight=in_flight):
        assert not isinstance(item, Exception), item
        if isinstance(item, CaptionResult):
            results[key] = item
            order.append((key, "result"))
        else:
            assert isinstance(item, TokenPiece)
            order.append((key, "piece"))
    return [Run(results[i], trace.steps[i]) for i in range(len(requests))], order


def agrees(batched: Run, lone: Run, *, greedy: bool = True) -> bool:
    """Assert logits within TOL while the tokens agree, a divergence only at a near-tie, and
    identical results when the runs never diverge (then return True)."""
    assert batched.steps and lone.steps
    for (got, token), (want, want_token) in zip(batched.steps, lone.steps, strict=False):
        assert float(np.abs(got - want).max()) <= TOL
        if token != want_token:
            top2 = np.sort(want)[-2:]
            assert not greedy or top2[1] - top2[0] < 2 * TOL, "diverged without a near-tie"
            return False
    assert len(batched.steps) == len(lone.steps)
    assert (batched.result.text, batched.result.finish_reason) == (
        lone.result.text,
        lone.result.finish_reason,
    )
    return True


def test_four_batched_captions_agree_with_the_same_requests_alone(
    engine: Engine, images: list[LoadedImage]
) -> None:
    requests = [ask(image, f"Describe picture {i}.") for i, image in enumerate(images)]
    lone = alone(engine, requests)
    engine.scheduler._prompts._embeddings._items.clear()  # encode again, batched
    batched, order = together(engine, requests)
    agreed = [agrees(batched[i], lone[i]) for i in range(4)]
    assert sum(agreed) >= 2  # most runs have no near-tie at all
    # They really ran together: a later request streamed before the first one finished.
    first_result = order.index((0, "result"))
    assert any(key != 0 for key, _ in order[:first_result])
    assert engine.scheduler.busy_slots == 0


def test_requests_join_and_leave_mid_stream(engine: Engine, images: list[LoadedImage]) -> None:
    requests = [
        ask(images[0], "Short.", max_tokens=3),
        ask(images[1], "Long.", max_tokens=24),
        ask(images[2], "Joins later.", max_tokens=12),
        ask(None, "Text only, joins last.", max_tokens=8),
    ]
    lone = alone(engine, requests)
    batched, order = together(engine, requests, in_flight=2)
    for i in range(4):
        agrees(batched[i], lone[i])
    # Request 2 could only start once 0 had left, and streamed while 1 was still generating.
    assert order.index((0, "result")) < order.index((2, "piece")) < order.index((1, "result"))


def test_same_image_different_prompts_encode_once_and_share_the_prefix(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path)
    image = load_image(picture(9), settings)
    requests = [ask(image, prompt) for prompt in ("What is it?", "Colours?", "Count them.")]
    with Engine(tiny_model_files, settings) as eng:
        batched, _ = together(eng, requests)
        assert eng.counters["image_encodes"] == 1
    with Engine(tiny_model_files, settings.model_copy(update={"image_cache_entries": 0})) as eng:
        lone = alone(eng, requests)
    for i in range(3):
        agrees(batched[i], lone[i])
    assert [run.result.prefix_cache_hit for run in batched] == [False, True, True]


def test_json_schema_and_free_text_in_one_batch(engine: Engine, images: list[LoadedImage]) -> None:
    requests = [
        ask(images[0], "Answer in JSON.", max_tokens=48, json_schema=SCHEMA),
        ask(images[1], "Free text.", max_tokens=24),
    ]
    lone = alone(engine, requests)
    batched, _ = together(engine, requests)
    jsonschema.validate(json.loads(batched[0].result.text), SCHEMA)
    agrees(batched[0], lone[0], greedy=False)  # the grammar picks, not the raw argmax
    agrees(batched[1], lone[1])
    assert not batched[1].result.text.startswith('{"colour"')


def test_cancelling_stops_the_sequence_and_frees_its_slot(
    engine: Engine, images: list[LoadedImage]
) -> None:
    scheduler = engine.scheduler
    keep, drop = ask(images[2], "Keep going.", 16), ask(images[3], "Stop me.", 200)
    (lone,) = alone(engine, [keep])
    trace = Trace(engine)
    scheduler.submit("keep", keep)
    scheduler.submit("drop", drop)
    events: list[tuple[object, object]] = []
    for _ in range(200):  # a deadline, in steps
        events += scheduler.step()
        if sum(key == "drop" and isinstance(item, TokenPiece) for key, item in events) >= 2:
            break
    assert scheduler.busy_slots == 2
    scheduler.cancel("drop")
    events += scheduler.step()
    cancelled = [item for key, item in events if key == "drop" and isinstance(item, CaptionResult)]
    assert len(cancelled) == 1 and cancelled[0].finish_reason == "cancelled"
    assert scheduler.busy_slots == 1
    for _ in range(200):
        if scheduler.idle:
            break
        events += scheduler.step()
    assert scheduler.idle and scheduler.busy_slots == 0
    (kept,) = [item for key, item in events if key == "keep" and isinstance(item, CaptionResult)]
    agrees(Run(kept, trace.steps["keep"]), lone)


def test_closing_a_stream_early_frees_its_slot(engine: Engine, images: list[LoadedImage]) -> None:
    stream = engine.stream(ask(images[0], "Going away.", max_tokens=200))
    assert isinstance(next(stream), TokenPiece)
    assert engine.scheduler.busy_slots == 1
    stream.close()
    assert engine.scheduler.busy_slots == 0 and engine.scheduler.idle
    assert engine.caption(ask(images[1], "Next.", max_tokens=4)).generated_tokens >= 1


def test_a_refused_request_fails_alone(engine: Engine, images: list[LoadedImage]) -> None:
    requests = [
        ask(images[0], "Fine.", max_tokens=6),
        ask(images[1], "x " * 9000, max_tokens=6),  # longer than the context
    ]
    out = list(engine.stream_many(iter(enumerate(requests))))
    errors = [item for key, item in out if isinstance(item, Exception)]
    results = [item for key, item in out if isinstance(item, CaptionResult)]
    assert len(errors) == 1 and isinstance(errors[0], ContextOverflow)
    assert len(results) == 1 and results[0].generated_tokens >= 1


def test_a_folder_run_keeps_two_images_in_flight(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(picture(20 + i))
    items = find_images([str(tmp_path)])
    options = CaptionOptions(prompt="Describe.", sampling=Sampling(max_tokens=10))
    events: list[tuple[str, str]] = []
    summary = caption_many(
        items,
        engine,
        settings,
        options,
        on_piece=lambda image, _text: events.append((image.name, "piece")),
        on_outcome=lambda outcome: events.append((outcome.image.name, "done")),
    )
    assert (summary.captioned, summary.failed) == (3, 0)
    first, second = items[0].name, items[1].name
    assert events.index((second, "piece")) < events.index((first, "done"))
    assert engine.scheduler.busy_slots == 0
