"""The shared shape of `202 Accepted` for queued work (rationale jobs, training runs)."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel

IDEMPOTENCY_HEADER = "Idempotency-Key"


def accepted(view: BaseModel, location: str, created: bool) -> JSONResponse:
    """202 with the resource and its Location; `Idempotent-Replayed` when a key matched earlier."""
    headers = {"Location": location}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(view.model_dump(mode="json"), status_code=202, headers=headers)
