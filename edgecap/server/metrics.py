"""Prometheus metrics at ``GET /metrics``, in a registry of the app's own (no module globals).

Two sources:

- what the server itself sees, as counters and histograms: tasks received by type and outcome,
  the time to answer each task, the time to fetch and decode images;
- what the task service reports (``TaskService.stats()``), read at scrape time: queue depth,
  tasks by status, token totals, worker restarts, deliveries by status, and per-stage latency
  quantiles over the service's recent samples (``edgecap_stage_latency_seconds``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edgecap.runtime.service import TaskService
from edgecap.runtime.stats import LATENCY_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (0.5, 0.9, 0.99)


class Metrics:
    """The app's metrics; handlers call the ``observe_*`` methods."""

    def __init__(self, service: TaskService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._tasks = Counter(
            "edgecap_api_tasks",
            "Tasks received over the API, by task type and outcome (success, accepted, or the "
            "error code)",
            ["task_type", "outcome"],
            registry=self.registry,
        )
        self._task_seconds = Histogram(
            "edgecap_api_task_seconds",
            "Time from receiving a task to answering it, by task type and delivery method",
            ["task_type", "delivery"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._image_seconds = Histogram(
            "edgecap_image_load_seconds",
            "Time to fetch, decode and resize one input image",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ServiceCollector(service))

    def observe_task(self, task_type: str, outcome: str, delivery: str, seconds: float) -> None:
        self._tasks.labels(task_type, outcome).inc()
        self._task_seconds.labels(task_type, delivery).observe(seconds)

    def observe_image_load(self, seconds: float) -> None:
        self._image_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ServiceCollector(Collector):
    """The task service's figures, read when Prometheus scrapes."""

    def __init__(self, service: TaskService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        stats: dict[str, Any] = self.service.stats()
        yield GaugeMetricFamily(
            "edgecap_queue_depth", "Tasks waiting for the engine", value=stats["queue_depth"]
        )
        yield _labelled(
            GaugeMetricFamily("edgecap_tasks", "Tasks in the store, by status", labels=["status"]),
            stats["tasks"],
        )
        yield _labelled(
            CounterMetricFamily(
                "edgecap_tokens", "Tokens processed since start, by kind", labels=["kind"]
            ),
            stats["tokens"],
        )
        yield _labelled(
            GaugeMetricFamily(
                "edgecap_deliveries", "Webhook and upload deliveries, by status", labels=["status"]
            ),
            stats["deliveries"],
        )
        worker = stats["worker"]
        yield GaugeMetricFamily(
            "edgecap_ready", "1 when the default model is loaded", value=int(worker["ready"])
        )
        yield CounterMetricFamily(
            "edgecap_worker_restarts", "Engine process restarts", value=worker["restarts"]
        )
        yield from _stage_latencies(stats["latency_seconds"])
        yield from stats["latency_histograms"]


def _labelled(family: GaugeMetricFamily | CounterMetricFamily, values: dict[str, int]) -> Metric:
    for label, value in values.items():
        family.add_metric([label], value)
    return family


def _stage_latencies(samples: dict[str, list[float]]) -> Iterator[Metric]:
    quantiles = GaugeMetricFamily(
        "edgecap_stage_latency_seconds",
        "Per-stage latency quantiles over the recent tasks (stages: load_image, encode, "
        "prefill, generate, queue, run)",
        labels=["stage", "quantile"],
    )
    counts = GaugeMetricFamily(
        "edgecap_stage_latency_samples",
        "How many recent tasks the stage quantiles are computed over",
        labels=["stage"],
    )
    for stage, values in sorted(samples.items()):
        counts.add_metric([stage], len(values))
        if len(values) < 2:
            for q in QUANTILES:
                quantiles.add_metric([stage, str(q)], values[0] if values else float("nan"))
            continue
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        for q in QUANTILES:
            quantiles.add_metric([stage, str(q)], cuts[round(q * 100) - 1])
    yield quantiles
    yield counts
