"""/v1/training-runs: submit, list, inspect, follow and cancel training runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from distillery_gateway.deps import serving
from distillery_gateway.queued_work import QueuedWork, add_queued_work_routes
from distillery_gateway.training import protocol as p
from distillery_gateway.training.serving import TrainingService

router = APIRouter(prefix="/v1/training-runs", tags=["training runs"])

Runs = Annotated[TrainingService, serving(TrainingService)]
RunId = Annotated[
    str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$", description="The run's id.")
]


def run_id(run_id: RunId) -> str:
    return run_id


DOCS = {
    "create": "Queue a run on the trainer (202). The same Idempotency-Key with the same body "
    "returns the same run.",
    "get": "Status, step/total, loss curve (per-task losses) and, when done, eval metrics and the model id.",
    "cancel": "A queued run is cancelled at once; a running one stops at its next step and keeps its "
    "checkpoints.",
}
MODELS = (p.CreateTrainingRun, p.TrainingRun, p.TrainingRunList, p.RunQuery)  # body, view, page, query
add_queued_work_routes(
    router, QueuedWork("run", "train:write", "train:read", TrainingService, MODELS, run_id, 1.0, DOCS)
)
