"""OpenAPI `responses` of the serving routes: the JSON body or an SSE stream, and their errors."""

from __future__ import annotations

from typing import Any

from distillery_gateway.errors import ErrorResponse


def serving_responses(stream_name: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": f"The result; with `stream: true`, a `text/event-stream` of `{stream_name}` "
            "events (`data: {...}`) ending with `data: [DONE]`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        400: {"model": ErrorResponse, "description": "Invalid request (field named in `param`)."},
        404: {"model": ErrorResponse, "description": "The model is not served here."},
        503: {
            "model": ErrorResponse,
            "description": "Busy (queue full) or loading: retry after `Retry-After`.",
        },
    }
