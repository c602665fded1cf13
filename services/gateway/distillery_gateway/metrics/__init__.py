"""Prometheus metrics: the app's collectors (`GatewayMetrics`) and GET /metrics."""

from distillery_gateway.metrics.collectors import GatewayMetrics

__all__ = ["GatewayMetrics"]
