"""Prometheus metrics of one gateway app (prometheus-client).

Each app gets its own registry, so several apps in one process (tests) do not collide. With
`uvicorn --workers N`, set PROMETHEUS_MULTIPROC_DIR (an empty directory) and /metrics aggregates all
worker processes through prometheus-client's multiprocess collector.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class GatewayMetrics:
    """Requests, latencies, batching, queue depth, tokens and the model version served."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "distillery_gateway_requests", "HTTP requests handled.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "distillery_gateway_request_duration_seconds",
            "Time to the end of the response (streams included).",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "distillery_gateway_rate_limited", "Requests refused with 429 by the per-key limit.", registry=r
        )
        self.batch_size = Histogram(
            "distillery_student_batch_size",
            "Sequences per batched generate call.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "distillery_student_queue_depth",
            "Requests waiting for the student (not counting the running batch).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.running = Gauge(
            "distillery_student_running",
            "Sequences the student is generating or scoring now.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cancelled = Counter(
            "distillery_gateway_requests_cancelled",
            "Requests whose client left before the answer; their generation was stopped.",
            ["route"],
            registry=r,
        )
        self.tokens = Counter(
            "distillery_student_tokens", "Tokens processed by the student.", ["kind"], registry=r
        )
        self.predictions = Counter(
            "distillery_student_predictions",
            "Answers given by /v1/predict, by how the option was chosen.",
            ["method"],
            registry=r,
        )
        self.model_info = Gauge(
            "distillery_student_model_info",
            "1 for the model version this replica serves.",
            ["model", "name", "version", "backend"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.swaps = Counter(
            "distillery_student_model_loads", "Model loads for serving, by outcome.", ["outcome"], registry=r
        )

    def served(self, model: str, name: str, version: int | None, backend: str) -> None:
        """Record the model now served (the previous one's series goes away)."""
        self.model_info.clear()
        self.model_info.labels(model, name, "" if version is None else str(version), backend).set(1)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
