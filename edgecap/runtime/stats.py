"""What the task service measures: per-stage latencies, token totals, the recent run pace.

Stage latencies are kept twice, for two readers: a prometheus-client histogram since start
(``edgecap_stage_seconds``, exported by :mod:`edgecap.server.metrics`), and the recent samples
behind the quantile gauges. :data:`LATENCY_BUCKETS` are the buckets of every latency histogram
edgecap exports.
"""

from __future__ import annotations

import statistics
import threading
from collections import Counter, deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

from edgecap.records import CaptionResult

# Upper bounds (seconds) of the latency histogram buckets: from a tiny model's milliseconds to
# a 7B vision encode of a big image on a small CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
LATENCY_SAMPLES = 1000  # recent samples kept per stage for the quantiles
RUN_SAMPLES = 20  # recent task durations behind the retry-after estimate
FIRST_TASK_GUESS_S = 15.0  # the retry-after estimate before any task has finished


class ServiceStats:
    """Per-stage latencies (recent samples and a histogram since start) and token totals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages = Histogram(
            "edgecap_stage_seconds",
            "Per-stage latency since start "
            "(stages: load_image, encode, prefill, generate, queue, run)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=CollectorRegistry(auto_describe=True),  # its own: no module globals
        )
        self._latency: dict[str, deque[float]] = {}
        self._tokens: Counter[str] = Counter()
        self._runs: deque[float] = deque(maxlen=RUN_SAMPLES)

    def record(self, result: CaptionResult, queued_s: float, run_s: float) -> None:
        stages = {**result.timings, "queue": queued_s, "run": run_s}
        with self._lock:
            for stage, seconds in stages.items():
                self._latency.setdefault(stage, deque(maxlen=LATENCY_SAMPLES)).append(seconds)
                self._stages.labels(stage).observe(seconds)
            self._tokens.update(
                prompt=result.prompt_tokens,
                image=result.image_tokens,
                generated=result.generated_tokens,
            )
            self._runs.append(run_s)

    def histograms(self) -> Iterable[Metric]:
        """The stage histogram as prometheus metric families, for a collector to yield."""
        return self._stages.collect()

    def latencies(self) -> dict[str, list[float]]:
        with self._lock:
            return {stage: list(samples) for stage, samples in self._latency.items()}

    def tokens(self) -> dict[str, int]:
        with self._lock:
            return {kind: self._tokens[kind] for kind in ("prompt", "image", "generated")}

    def typical_run_seconds(self) -> float:
        with self._lock:
            return statistics.median(self._runs) if self._runs else FIRST_TASK_GUESS_S
