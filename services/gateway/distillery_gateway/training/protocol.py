"""The training-run contract: request and response bodies of /v1/training-runs.

The request body is the core library's `TrainConfig` (the same one `distillery train` builds), so the
API, the CLI and the trainer agree on every field by construction.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from distillery.distill.config import TrainConfig
from distillery_gateway.pagination import CursorPage, ListQuery

CreateTrainingRun = TrainConfig
# distillery.store.runs.STATUSES
RunStatus = Literal["queued", "running", "cancelling", "completed", "failed", "cancelled"]


class LossPoint(BaseModel):
    """One logged training step: total loss, per-task losses (`loss_answer`, `loss_<teacher>`), lr."""

    model_config = {"extra": "allow"}
    step: int
    loss: float | None = None


class TrainingRun(BaseModel):
    id: str
    object: Literal["training_run"] = "training_run"
    status: RunStatus
    method: str
    student: str
    dataset: str
    step: int = Field(description="Optimiser steps done.")
    total_steps: int = Field(description="Optimiser steps planned (0 until training starts).")
    progress: float = Field(description="step / total_steps, 0..1.")
    loss_curve: list[LossPoint]
    metrics: dict = Field(description="Training figures and `eval` (accuracy, letter distribution, ...).")
    model_id: str | None = Field(
        default=None, description="Registry id of the trained model, once registered."
    )
    output_dir: str | None = None
    error: str | None = None
    config: TrainConfig
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None


class RunQuery(ListQuery):
    """GET /v1/training-runs: newest first, `after` + `limit`, optionally one status."""

    status: RunStatus | None = None


class TrainingRunList(CursorPage):
    data: list[TrainingRun]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class TrainingRunEvent(BaseModel):
    """Data of a `progress` / `end` server-sent event."""

    id: str
    status: RunStatus
    step: int
    total_steps: int
    progress: float
    last_loss: dict | None = None
    metrics: dict | None = None
    error: str | None = None
