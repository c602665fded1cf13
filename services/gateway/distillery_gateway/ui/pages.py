"""The dashboard's pages, rendered from the same services the /v1 routes call (no logic of their own).

Reads happen here on the server; actions (submit, cancel, promote, predict) are the browser calling the
REST API, so the API's scope checks and error messages apply unchanged. Each page needs the scope of
the API reads it shows (a 403 page otherwise).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse

from distillery.rationales.incontext import STRATEGIES
from distillery.store import examples as ex_store
from distillery.store.jobs import TERMINAL
from distillery.store.rationales import RationaleFilter
from distillery.store.runs import FINISHED
from distillery_gateway.deps import SessionDep
from distillery_gateway.errors import APIError
from distillery_gateway.jobs.api_router import Jobs
from distillery_gateway.jobs.protocol import JobQuery
from distillery_gateway.openai.models.api_router import Models
from distillery_gateway.pagination import CursorPage, ListQuery
from distillery_gateway.registry.api_router import Registry
from distillery_gateway.teachers.api_router import Teachers
from distillery_gateway.training.api_router import Runs
from distillery_gateway.training.protocol import RunQuery
from distillery_gateway.ui.web import JobsPage, ModelsPage, PlaygroundPage, TrainingPage, render, render_error

router = APIRouter(prefix="/ui", include_in_schema=False)

JobId = Annotated[str, Path(min_length=1, max_length=32)]
RunId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$")]
YesNo = Literal["", "yes", "no"]
PER_PAGE = 50
RATIONALES_PER_PAGE = 200


def _page(after: Annotated[str | None, Query(max_length=32)] = None) -> ListQuery:
    """The page of a list the browser asks for: PER_PAGE items after the `after` cursor."""
    return ListQuery(limit=PER_PAGE, after=after)


Page = Annotated[ListQuery, Depends(_page)]


def _next(page: CursorPage) -> Any:
    """The cursor of the page after this one (its `after`), or None on the last page."""
    return page.last_id if page.has_more else None


def _flag(value: str) -> bool | None:
    return {"yes": True, "no": False}.get(value)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request, ui: JobsPage, session: SessionDep, jobs: Jobs, teachers: Teachers, page: Page
) -> HTMLResponse:
    listing = jobs.list(session, JobQuery(limit=page.limit, after=page.after))
    return render(
        request,
        "jobs.html",
        ui,
        jobs=listing.data,
        next_after=_next(listing),
        terminal=TERMINAL,
        teachers=teachers.list(session).data,
        splits=ex_store.split_counts(session),
        strategies=STRATEGIES,
    )


@router.get("/jobs/{job_id}/rationales", response_class=HTMLResponse)
def rationales_page(
    request: Request,
    ui: JobsPage,
    session: SessionDep,
    jobs: Jobs,
    job_id: JobId,
    teacher: Annotated[str, Query(max_length=100)] = "",
    truncated: YesNo = "",
    agrees: YesNo = "",
    example_id: Annotated[str, Query(max_length=200)] = "",
    after: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    """One job's rationales grouped by example: the question, its options and gold, teachers side by side."""
    query = RationaleFilter(
        teacher=teacher or None,
        truncated=_flag(truncated),
        agrees_with_gold=_flag(agrees),
        example_id=example_id or None,
        after=after,
        limit=RATIONALES_PER_PAGE,
    )
    try:
        job = jobs.get(session, job_id)
        page = jobs.rationales(session, job_id, query)
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
        next_after=_next(page),
        shown=len(page.data),
    )


@router.get("/teachers", response_class=HTMLResponse)
def teachers_page(request: Request, ui: JobsPage, session: SessionDep, teachers: Teachers) -> HTMLResponse:
    rows = [(teacher, teachers.stats(session, teacher.name)) for teacher in teachers.list(session).data]
    return render(request, "teachers.html", ui, rows=rows)


@router.get("/training", response_class=HTMLResponse)
def training_page(
    request: Request, ui: TrainingPage, session: SessionDep, runs: Runs, page: Page
) -> HTMLResponse:
    listing = runs.list(session, RunQuery(limit=page.limit, after=page.after))
    return render(request, "training.html", ui, runs=listing.data, next_after=_next(listing))


@router.get("/training/{run_id}", response_class=HTMLResponse)
def training_run_page(
    request: Request, ui: TrainingPage, session: SessionDep, runs: Runs, run_id: RunId
) -> HTMLResponse:
    try:
        run = runs.get(session, run_id)
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
def models_page(
    request: Request, ui: ModelsPage, session: SessionDep, registry: Registry, models: Models
) -> HTMLResponse:
    registered = registry.list(session, None, None)
    return render(request, "models.html", ui, models=registered.data, served=models.list().data)


@router.get("/playground", response_class=HTMLResponse)
def playground_page(request: Request, ui: PlaygroundPage, models: Models) -> HTMLResponse:
    return render(request, "playground.html", ui, served=models.list().data)
