"""/v1/rationale-jobs: submit, list, inspect, follow, cancel and export rationale jobs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from distillery_gateway.deps import SessionDep, require_scope, serving
from distillery_gateway.jobs import protocol as p
from distillery_gateway.jobs.serving import JobService
from distillery_gateway.queued_work import QueuedWork, add_queued_work_routes

router = APIRouter(prefix="/v1/rationale-jobs", tags=["rationale jobs"])

Jobs = Annotated[JobService, serving(JobService)]
JobId = Annotated[str, Path(min_length=1, max_length=32, description="The job's id.")]


def job_id(job_id: JobId) -> str:
    return job_id


DOCS = {
    "create": "Queue a job (202). The same Idempotency-Key with the same body returns the same job.",
    "get": "Status, per-teacher progress (done/failed/total), token usage and the first errors.",
    "cancel": "Stop a job: workers make no further teacher calls; stored rationales stay.",
}
MODELS = (p.CreateRationaleJob, p.RationaleJob, p.RationaleJobList, p.JobQuery)  # body, view, page, query
add_queued_work_routes(
    router, QueuedWork("job", "jobs:write", "jobs:read", JobService, MODELS, job_id, 0.5, DOCS)
)


@router.get("/{job_id}/rationales", response_model=p.RationaleList, dependencies=[require_scope("jobs:read")])
def list_rationales(
    job_id: JobId,
    query: Annotated[p.RationaleQuery, Query()],
    jobs: Jobs,
    session: SessionDep,
) -> p.RationaleList:
    return jobs.rationales(session, job_id, query)


@router.get("/{job_id}/export", dependencies=[require_scope("jobs:read")])
def export_job(
    job_id: JobId,
    jobs: Jobs,
    session: SessionDep,
    format: Annotated[
        Literal["jsonl"], Query(description="Only 'jsonl' (the rationale exchange format).")
    ] = "jsonl",
    teacher: Annotated[list[str] | None, Query(description="Only these teachers, in this order.")] = None,
) -> StreamingResponse:
    """The job's rationales as JSON Lines in the ../shared/rationales format, streamed."""
    return StreamingResponse(
        jobs.export(session, job_id, teacher),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="rationales-{job_id}.jsonl"'},
    )
