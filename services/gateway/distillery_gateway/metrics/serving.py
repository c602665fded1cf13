"""The exposition of the app's metrics, with the engine's queue depth and running sequences read at
scrape time."""

from __future__ import annotations

from distillery_gateway.engine.manager import ModelManager
from distillery_gateway.metrics.collectors import GatewayMetrics


class MetricsServing:
    def __init__(self, metrics: GatewayMetrics, manager: ModelManager):
        self.metrics, self.manager = metrics, manager

    def exposition(self) -> bytes:
        self.metrics.queue_depth.set(self.manager.queue_depth)
        self.metrics.running.set(self.manager.running)
        return self.metrics.exposition()
