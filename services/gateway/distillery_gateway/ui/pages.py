"""The dashboard's pages, rendered from the same services the /v1 routes call (no logic of their own).

Reads happen here on the server; actions (submit, cancel, promote, predict) are the browser calling the
REST API, so the API's scope checks and error messages apply unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from distillery.rationales.incontext import STRATEGIES
from distillery.store import examples as ex_store
from distillery.store.jobs import TERMINAL
from distillery.store.runs import FINISHED
from distillery_gateway.deps import SessionDep
from distillery_gateway.errors import APIError
from distillery_gateway.jobs.serving import JobService
from distillery_gateway.teachers.serving import TeacherService
from distillery_gateway.training.serving import TrainingService
from distillery_gateway.ui.web import SessionPage, render, render_error

router = APIRouter(prefix="/ui", include_in_schema=False)

JobId = Annotated[str, Path(min_length=1, max_length=32)]
RunId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$")]
YesNo = Literal["", "yes", "no"]
RATIONALES_PER_PAGE = 200


def _flag(value: str) -> bool | None:
    return {"yes": True, "no": False}.get(value)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, ui: SessionPage, session: SessionDep) -> HTMLResponse:
    service = JobService(session, request.app.state.celery)
    listing = service.list(50, None, None, None)
    return render(
        request,
        "jobs.html",
        ui,
        jobs=listing.data,
        terminal=TERMINAL,
        teachers=TeacherService(session).list().data,
        splits=ex_store.split_counts(session),
        strategies=STRATEGIES,
    )


@router.get("/jobs/{job_id}/rationales", response_class=HTMLResponse)
def rationales_page(
    request: Request,
    ui: SessionPage,
    session: SessionDep,
    job_id: JobId,
    teacher: Annotated[str, Query(max_length=100)] = "",
    truncated: YesNo = "",
    agrees: YesNo = "",
    example_id: Annotated[str, Query(max_length=200)] = "",
    after: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    """One job's rationales grouped by example: the question, its options and gold, teachers side by side."""
    service = JobService(session, request.app.state.celery)
    try:
        job = service.get(job_id)
        page = service.rationales(
            job_id,
            teacher=teacher or None,
            truncated=_flag(truncated),
            agrees_with_gold=_flag(agrees),
            example_id=example_id or None,
            after=after,
            limit=RATIONALES_PER_PAGE,
        )
    except APIError as exc:
        return render_error(request, ui, exc)
    by_example: dict[str, dict[str, list]] = {}
    for rationale in page.data:
        by_example.setdefault(rationale.example_id, {}).setdefault(rationale.teacher, []).append(rationale)
    examples = {
        ex.id: ex for _, ex in ex_store.load_examples(session, job.dataset, job.split, list(by_example))
    }
    return render(
        request,
        "rationales.html",
        ui,
        job=job,
        groups=[(examples.get(ex_id), ex_id, per_teacher) for ex_id, per_teacher in by_example.items()],
        columns=[teacher] if teacher else job.teachers,
        filters={"teacher": teacher, "truncated": truncated, "agrees": agrees, "example_id": example_id},
        next_after=page.last_id if page.has_more else None,
        shown=len(page.data),
    )


@router.get("/teachers", response_class=HTMLResponse)
def teachers_page(request: Request, ui: SessionPage, session: SessionDep) -> HTMLResponse:
    service = TeacherService(session)
    rows = [(teacher, service.stats(teacher.name)) for teacher in service.list().data]
    return render(request, "teachers.html", ui, rows=rows)


@router.get("/training", response_class=HTMLResponse)
def training_page(request: Request, ui: SessionPage, session: SessionDep) -> HTMLResponse:
    runs = TrainingService(session, request.app.state.celery).list(50, 0, None)
    return render(request, "training.html", ui, runs=runs.data)


@router.get("/training/{run_id}", response_class=HTMLResponse)
def training_run_page(request: Request, ui: SessionPage, session: SessionDep, run_id: RunId) -> HTMLResponse:
    try:
        run = TrainingService(session, request.app.state.celery).get(run_id)
    except APIError as exc:
        return render_error(request, ui, exc)
    evaluation = run.metrics.get("eval") if isinstance(run.metrics.get("eval"), dict) else {}
    return render(
        request,
        "training_run.html",
        ui,
        run=run,
        finished=run.status in FINISHED,
        points=[point.model_dump() for point in run.loss_curve],
        evaluation=evaluation,
        figures={k: v for k, v in run.metrics.items() if k != "eval" and not isinstance(v, dict | list)},
    )


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, ui: SessionPage, session: SessionDep) -> HTMLResponse:
    registered = request.app.state.serving_registry.list(session, None, None)
    served = request.app.state.serving_models.list()
    return render(request, "models.html", ui, models=registered.data, served=served.data)


@router.get("/playground", response_class=HTMLResponse)
def playground_page(request: Request, ui: SessionPage) -> HTMLResponse:
    served = request.app.state.serving_models.list()
    return render(request, "playground.html", ui, served=served.data)
