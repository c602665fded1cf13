"""The routes rationale jobs and training runs share: queued work a worker reports on through its row.

`POST` queues it (202, `Idempotency-Key`), `GET` lists it by cursor, `GET /{id}` shows it,
`GET /{id}/events` follows it (server-sent events) and `POST /{id}/cancel` stops it. Each feature's
api_router calls `add_queued_work_routes` with its own models and serving class, then adds its own routes.

Reads need the work's read scope (implied by its write scope). A created row records the key that made
it (`created_by`); cancelling work of another key, or work without an owner, needs `admin`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse

from distillery import apikeys
from distillery_gateway.accepted import IdempotencyKey, Queued, accepted
from distillery_gateway.deps import PrincipalDep, SessionDep, require_scope, serving
from distillery_gateway.errors import APIError
from distillery_gateway.progress import Snapshot, progress_stream


class QueuedWorkServing(Protocol):
    def create(self, session: Session, body: Any, key: str | None) -> tuple[Queued, bool]: ...
    def list(self, session: Session, query: Any) -> BaseModel: ...
    def get(self, session: Session, work_id: str) -> BaseModel: ...
    def get_row(self, session: Session, work_id: str) -> object: ...
    def cancel(self, session: Session, work_id: str) -> BaseModel: ...
    def snapshot(self, session: Session, work_id: str) -> Snapshot: ...


@dataclass(frozen=True)
class QueuedWork:
    """One kind of queued work: its noun, the scope that writes it, its serving class and models."""

    noun: str  # "job": routes create_job, list_jobs, get_job, job_events, cancel_job
    scope: str  # writes (create, cancel)
    read_scope: str  # list, get, events
    serving: type[QueuedWorkServing]
    models: tuple[
        type[BaseModel], type[BaseModel], type[BaseModel], type[BaseModel]
    ]  # body, view, page, query
    work_id: Callable[..., str]  # a dependency whose parameter names the path's id (`job_id`, `run_id`)
    poll_s: float  # how often its progress stream reads the row
    docs: dict[str, str]  # descriptions of its create, get and cancel routes


def check_owner(principal: apikeys.Principal, row: object, noun: str) -> None:
    """403 unless `principal` made `row` (its `created_by`) or holds `admin`."""
    owner = getattr(row, "created_by", None)
    if owner != principal.key_id and not principal.allows("admin"):
        raise APIError(
            403,
            f"this {noun} was made by another API key; cancelling it needs the 'admin' scope",
            code="insufficient_scope",
        )


def add_queued_work_routes(router: APIRouter, work: QueuedWork) -> None:
    """Add the five shared routes of `work` to `router` (whose prefix is the collection's path)."""
    body, view, page, query = work.models
    service = Annotated[Any, serving(work.serving)]
    work_id = Annotated[str, Depends(work.work_id)]

    def create(
        body: Any, works: Any, session: SessionDep, principal: PrincipalDep, key: IdempotencyKey = None
    ) -> JSONResponse:
        created_view, created = works.create(session, body, key)
        if created:
            works.get_row(session, created_view.id).created_by = principal.key_id
        return accepted(created_view, created, router.prefix)

    def listing(query: Any, works: Any, session: SessionDep) -> BaseModel:
        return works.list(session, query)

    def get(id_: Any, works: Any, session: SessionDep) -> BaseModel:
        return works.get(session, id_)

    def events(id_: Any, request: Request, works: Any, session: SessionDep) -> EventSourceResponse:
        works.get_row(session, id_)  # 404 before the stream opens
        return progress_stream(request, lambda own: works.snapshot(own, id_), work.poll_s)

    def cancel(id_: Any, works: Any, session: SessionDep, principal: PrincipalDep) -> BaseModel:
        check_owner(principal, works.get_row(session, id_), work.noun)
        return works.cancel(session, id_)

    # FastAPI reads the bodies, queries and dependencies from the annotations, set per kind of work.
    create.__annotations__.update(body=body, works=service)
    listing.__annotations__.update(query=Annotated[query, Query()], works=service)
    for endpoint in (get, events, cancel):
        endpoint.__annotations__.update(id_=work_id, works=service)
    writes = [require_scope(work.scope)]
    reads = [require_scope(work.read_scope)]
    item = f"/{{{work.noun}_id}}"  # e.g. /{job_id}
    events_docs = (
        f"Progress as server-sent events: `progress` on every change, `end` once the {work.noun} is over."
    )
    # (path, endpoint, method, name, response model, scope dependencies, description, status code)
    routes: list[tuple[str, Callable[..., Any], str, str, Any, list[Any], str | None, int | None]] = [
        ("", create, "POST", f"create_{work.noun}", view, writes, work.docs["create"], 202),
        ("", listing, "GET", f"list_{work.noun}s", page, reads, None, None),
        (item, get, "GET", f"get_{work.noun}", view, reads, work.docs["get"], None),
        (f"{item}/events", events, "GET", f"{work.noun}_events", None, reads, events_docs, None),
        (f"{item}/cancel", cancel, "POST", f"cancel_{work.noun}", view, writes, work.docs["cancel"], None),
    ]
    for path, endpoint, method, name, model, deps, description, status in routes:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            name=name,
            response_model=model,
            dependencies=deps,
            description=description,
            status_code=status,
        )
