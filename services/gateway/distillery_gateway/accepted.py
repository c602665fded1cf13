"""The shared shape of `202 Accepted` for queued work (rationale jobs, training runs)."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import Header
from fastapi.responses import JSONResponse

IDEMPOTENCY_HEADER = "Idempotency-Key"

# The optional header of a create request: a repeat with the same key returns the first resource.
IdempotencyKey = Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=200)]


class Queued(Protocol):
    """The view of queued work (a pydantic model with an `id`)."""

    @property
    def id(self) -> str: ...

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


def accepted(view: Queued, created: bool, collection: str) -> JSONResponse:
    """202 with the resource and its Location (`collection/id`); `Idempotent-Replayed` when a key
    matched earlier."""
    headers = {"Location": f"{collection}/{view.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(view.model_dump(mode="json"), status_code=202, headers=headers)
