"""/v1/training-runs: submit, list, inspect, follow and cancel training runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from distillery.store.db import session_factory
from distillery_gateway.accepted import IDEMPOTENCY_HEADER, accepted
from distillery_gateway.deps import PrincipalDep, SessionDep, require_scope
from distillery_gateway.training import protocol as p
from distillery_gateway.training.events import progress_events
from distillery_gateway.training.serving import TrainingService

router = APIRouter(prefix="/v1/training-runs", tags=["training runs"])

RunId = Annotated[
    str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$", description="The run's id.")
]


def _service(request: Request, session) -> TrainingService:
    return TrainingService(session, request.app.state.celery)


@router.post("", status_code=202, response_model=p.TrainingRun, dependencies=[require_scope("train:write")])
def create_run(
    body: p.CreateTrainingRun,
    request: Request,
    session: SessionDep,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=200)] = None,
) -> JSONResponse:
    """Queue a run on the trainer (202). The same Idempotency-Key with the same body returns the same run."""
    view, created = _service(request, session).create(body, idempotency_key)
    return accepted(view, f"/v1/training-runs/{view.id}", created)


@router.get("", response_model=p.TrainingRunList)
def list_runs(
    request: Request,
    session: SessionDep,
    _: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Annotated[p.RunStatus | None, Query()] = None,
) -> p.TrainingRunList:
    return _service(request, session).list(limit, offset, status)


@router.get("/{run_id}", response_model=p.TrainingRun)
def get_run(run_id: RunId, request: Request, session: SessionDep, _: PrincipalDep) -> p.TrainingRun:
    """Status, step/total, loss curve (per-task losses) and, when done, eval metrics and the model id."""
    return _service(request, session).get(run_id)


@router.get("/{run_id}/events")
def run_events(run_id: RunId, request: Request, session: SessionDep, _: PrincipalDep) -> EventSourceResponse:
    """Progress as server-sent events: `progress` on every change, `end` once the run is over."""
    _service(request, session).get_row(run_id)  # 404 before the stream opens
    factory = session_factory(request.app.state.database_url)

    def load() -> p.TrainingRun:
        with factory() as own:
            service = TrainingService(own, request.app.state.celery)
            return service.view(service.get_row(run_id))

    return EventSourceResponse(progress_events(request, load), ping=15)


@router.post("/{run_id}/cancel", response_model=p.TrainingRun, dependencies=[require_scope("train:write")])
def cancel_run(run_id: RunId, request: Request, session: SessionDep) -> p.TrainingRun:
    """A queued run is cancelled at once; a running one stops at its next step and keeps its checkpoints."""
    return _service(request, session).cancel(run_id)
