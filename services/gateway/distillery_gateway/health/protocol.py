"""Bodies of /healthz and /readyz."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, bool] = Field(
        description="Each dependency (database, redis, model, ...) and whether it is up."
    )
