"""Engines for tests that do not need a real model.

``FakeEngine`` runs in-process (batch runs, the CLI). ``ScriptedEngineFactory`` is for the
engine process (``edgecap.runtime.worker``): the child imports this module by name and unpickles
the factory, so both stay at the top level of an importable module. The scripted engine picks its
behaviour from the prompt and appends one line per load and per caption to a log file, which is
how the parent sees what the child did.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgecap.errors import ContextOverflow, EdgecapError, UnknownModel
from edgecap.records import CaptionRequest, CaptionResult, TokenPiece

# Both fakes report these stage timings: 2.0 s of compute per caption.
FAKE_TIMINGS = {"load_image": 0.5, "encode": 1.0, "prefill": 0.25, "generate": 0.25}
FAKE_COMPUTE_S = sum(FAKE_TIMINGS.values())


class FakeEngine:
    """The engine interface with scripted output: ``a WxH image``, streamed word by word.

    Records every request. ``fail`` may return an error to raise for a request.
    """

    def __init__(
        self,
        model_id: str = "fake-model",
        fail: Callable[[CaptionRequest], EdgecapError | None] | None = None,
        before_stream: Callable[[CaptionRequest], None] | None = None,
    ) -> None:
        self.model_id = model_id
        self.requests: list[CaptionRequest] = []
        self.counters = {"image_encodes": 0, "image_cache_hits": 0, "prefix_cache_hits": 0}
        self.closed = False
        self._fail = fail
        self._before_stream = before_stream

    def stream(self, request: CaptionRequest) -> Iterator[TokenPiece | CaptionResult]:
        self.requests.append(request)
        if self._before_stream is not None:
            self._before_stream(request)
        error = self._fail(request) if self._fail is not None else None
        if error is not None:
            raise error
        image = request.image
        assert image is not None
        self.counters["image_encodes"] += 1
        text = f"a {image.width}x{image.height} image"
        words = text.split(" ")
        for i, word in enumerate(words):
            yield TokenPiece(word if i == 0 else f" {word}")
        yield CaptionResult(
            text=text,
            finish_reason="stop",
            prompt_tokens=20 + image.tokens,
            image_tokens=image.tokens,
            generated_tokens=len(words),
            timings=dict(FAKE_TIMINGS),
            model=self.model_id,
        )

    def caption(self, request: CaptionRequest) -> CaptionResult:
        for item in self.stream(request):
            if isinstance(item, CaptionResult):
                return item
        raise AssertionError("no result")

    def close(self) -> None:
        self.closed = True


class ScriptedEngine:
    """Duck of edgecap.engine.engine.Engine. The prompt picks the behaviour:

    ``abort`` calls os.abort(); ``abort-once:<path>`` aborts unless <path> exists (and creates
    it); ``invalid`` raises an EdgecapError; ``overflow`` a ContextOverflow (a subclass);
    ``bug`` raises a plain exception; ``sleep:<s>`` sleeps; anything else is captioned as
    ``"<model id> saw <prompt>"``.
    """

    def __init__(self, model_id: str, log: Path) -> None:
        self.model_id = model_id
        self.log = log
        self.counters = {"image_encodes": 0, "image_cache_hits": 0, "prefix_cache_hits": 0}

    def caption(self, request: CaptionRequest) -> CaptionResult:
        with self.log.open("a") as out:
            out.write(f"caption {request.prompt}\n")
        command, _, arg = request.prompt.partition(":")
        if command == "abort" or (command == "abort-once" and not Path(arg).exists()):
            if arg:
                Path(arg).touch()
            os.abort()
        if command == "invalid":
            raise EdgecapError(
                "too big", code="invalidParameter", status=400, parameter="maxPixels", max=9
            )
        if command == "overflow":
            raise ContextOverflow("too long", parameter="maxTokens", limit=4096)
        if command == "bug":
            raise ZeroDivisionError("division by zero")
        if command == "sleep":
            time.sleep(float(arg))
        image_tokens = request.image.tokens if request.image else 0
        return CaptionResult(
            text=f"{self.model_id} saw {request.prompt}",
            finish_reason="stop",
            prompt_tokens=10 + image_tokens,
            image_tokens=image_tokens,
            generated_tokens=5,
            timings=dict(FAKE_TIMINGS),
            model=f"{self.model_id}@{os.getpid()}",
        )

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ScriptedEngineFactory:
    """Picklable engine factory; logs ``load <model>`` and ``caption <prompt>`` to ``log``."""

    log: Path
    broken_default: bool = False  # the default model fails to load

    def __call__(self, model: str | None) -> ScriptedEngine:
        if model == "missing" or (model is None and self.broken_default):
            raise UnknownModel(f"No model named {model!r}.", parameter="model")
        with self.log.open("a") as out:
            out.write(f"load {model}\n")
        return ScriptedEngine(model or "default", self.log)

    def lines(self, kind: str) -> list[str]:
        """What the child logged: ``lines("load")`` -> ["None", "small"], ..."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line.split(" ", 1)[1] for line in lines if line.startswith(f"{kind} ")]
