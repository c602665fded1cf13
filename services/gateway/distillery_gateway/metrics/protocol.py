"""The body of GET /metrics: Prometheus' text exposition format."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

MEDIA_TYPE = CONTENT_TYPE_LATEST
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {MEDIA_TYPE: {"schema": {"type": "string"}}}, "description": "Metrics."}
}
