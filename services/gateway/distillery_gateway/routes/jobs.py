"""/v1/rationale-jobs: submit, list, inspect, follow, cancel and export rationale jobs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse

from distillery.store.db import session_factory
from distillery_gateway.accepted import IDEMPOTENCY_HEADER, accepted
from distillery_gateway.deps import PrincipalDep, SessionDep, require_scope
from distillery_gateway.jobs import protocol as p
from distillery_gateway.jobs.events import progress_events
from distillery_gateway.jobs.serving import JobService, export_jsonl

router = APIRouter(prefix="/v1/rationale-jobs", tags=["rationale jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=32, description="The job's id.")]


def _service(request: Request, session: Session) -> JobService:
    return JobService(session, request.app.state.celery)


@router.post("", status_code=202, response_model=p.RationaleJob, dependencies=[require_scope("jobs:write")])
def create_job(
    body: p.CreateRationaleJob,
    request: Request,
    session: SessionDep,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=200)] = None,
) -> JSONResponse:
    """Queue a job (202). The same Idempotency-Key with the same body returns the same job."""
    view, created = _service(request, session).create(body, idempotency_key)
    return accepted(view, f"/v1/rationale-jobs/{view.id}", created)


@router.get("", response_model=p.RationaleJobList)
def list_jobs(
    request: Request,
    session: SessionDep,
    _: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(max_length=32, description="Last job id of the previous page.")
    ] = None,
    status: Annotated[
        Literal["queued", "running", "completed", "completed_with_errors", "cancelled", "failed"] | None,
        Query(),
    ] = None,
    kind: Annotated[Literal["generate", "import"] | None, Query()] = None,
) -> p.RationaleJobList:
    return _service(request, session).list(limit, after, status, kind)


@router.get("/{job_id}", response_model=p.RationaleJob)
def get_job(job_id: JobId, request: Request, session: SessionDep, _: PrincipalDep) -> p.RationaleJob:
    """Status, per-teacher progress (done/failed/total), token usage and the first errors."""
    return _service(request, session).get(job_id)


@router.get("/{job_id}/events")
def job_events(job_id: JobId, request: Request, session: SessionDep, _: PrincipalDep) -> EventSourceResponse:
    """Progress as server-sent events: `progress` on every change, `end` once the job is over."""
    service = _service(request, session)
    service.get_row(job_id)  # 404 before the stream opens
    factory = session_factory(request.app.state.database_url)

    def load() -> p.RationaleJob:
        with factory() as own:
            own_service = JobService(own, request.app.state.celery)
            return own_service.view(own_service.get_row(job_id))

    return EventSourceResponse(progress_events(request, load), ping=15)


@router.post("/{job_id}/cancel", response_model=p.RationaleJob, dependencies=[require_scope("jobs:write")])
def cancel_job(job_id: JobId, request: Request, session: SessionDep) -> p.RationaleJob:
    """Stop a job: workers make no further teacher calls; stored rationales stay."""
    return _service(request, session).cancel(job_id)


@router.get("/{job_id}/rationales", response_model=p.RationaleList)
def list_rationales(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    _: PrincipalDep,
    teacher: Annotated[str | None, Query(max_length=100)] = None,
    truncated: bool | None = None,
    agrees_with_gold: bool | None = None,
    example_id: Annotated[str | None, Query(max_length=200)] = None,
    after: Annotated[int | None, Query(ge=0, description="Last rationale id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> p.RationaleList:
    return _service(request, session).rationales(
        job_id,
        teacher=teacher,
        truncated=truncated,
        agrees_with_gold=agrees_with_gold,
        example_id=example_id,
        after=after,
        limit=limit,
    )


@router.get("/{job_id}/export")
def export_job(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    _: PrincipalDep,
    format: Annotated[
        Literal["jsonl"], Query(description="Only 'jsonl' (the rationale exchange format).")
    ] = "jsonl",
    teacher: Annotated[list[str] | None, Query(description="Only these teachers, in this order.")] = None,
) -> StreamingResponse:
    """The job's rationales as JSON Lines in the ../shared/rationales format, streamed."""
    _service(request, session).export_check(job_id, teacher)
    # The stream outlives this request's session; it reads through one of its own.
    stream = export_jsonl(session_factory(request.app.state.database_url)(), job_id, teacher)
    return StreamingResponse(
        stream,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="rationales-{job_id}.jsonl"'},
    )
