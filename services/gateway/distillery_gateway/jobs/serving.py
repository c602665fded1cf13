"""Rationale jobs behind the routes: validation against the stored data, creation, views, cancel,
progress and export.

The gateway never runs a job: it writes the job row and enqueues `start_job` by name; workers do the
rest and report through the same rows.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import cast

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from distillery.queue import TASK_FINISH_JOB, TASK_START_JOB
from distillery.store import examples as ex_store
from distillery.store import jobs
from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.teachers import registry
from distillery_gateway.accepted import IDEMPOTENCY_HEADER
from distillery_gateway.errors import APIError
from distillery_gateway.jobs import protocol as p
from distillery_gateway.progress import Snapshot

log = logging.getLogger(__name__)

ERRORS_SHOWN = 20


def _invalid(param: str, message: str) -> APIError:
    return APIError(422, f"{param}: {message}", param=param, code="invalid_value")


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return (shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")) or "none"


def request_hash(req: p.CreateRationaleJob) -> str:
    return hashlib.sha256(req.model_dump_json().encode()).hexdigest()


class JobService:
    """Job operations; built once per app (with the Celery app it enqueues on and the database its
    exports read), each call given the request's database session."""

    def __init__(self, celery: Celery, database_url: str):
        self.celery = celery
        self.database_url = database_url

    # ------------------------------------------------------------------------------------------ create

    def _select_examples(self, session: Session, req: p.CreateRationaleJob, dataset: m.Dataset) -> list[int]:
        base = select(m.Example.id, m.Example.external_id).where(
            m.Example.dataset_id == dataset.id, m.Example.split == req.split
        )
        if req.ids is not None:
            found = dict(
                (ext, row_id)
                for row_id, ext in session.execute(base.where(m.Example.external_id.in_(req.ids)))
            )
            missing = [i for i in req.ids if i not in found]
            if missing:
                raise _invalid(
                    "ids",
                    f"{len(missing)} id(s) are not examples of '{dataset.name}/{req.split}': "
                    f"{_listing(missing, 5)}",
                )
            return [found[i] for i in req.ids]
        stmt = base.order_by(m.Example.id)
        if req.limit is not None:
            stmt = stmt.limit(req.limit)
        selected = [row_id for row_id, _ in session.execute(stmt)]
        if not selected:
            splits = [split for name, split, _ in ex_store.split_counts(session) if name == dataset.name]
            raise _invalid(
                "split",
                f"dataset '{dataset.name}' has no examples in split '{req.split}' "
                f"(splits with examples: {_listing(splits)})",
            )
        return selected

    def _validate(
        self, session: Session, req: p.CreateRationaleJob
    ) -> tuple[m.Dataset, list[m.Teacher], list[int]]:
        dataset = ex_store.find_dataset(session, req.dataset)
        if dataset is None:
            known = ex_store.dataset_names(session)
            raise _invalid("dataset", f"unknown dataset '{req.dataset}' (stored datasets: {_listing(known)})")
        found = [registry.get_teacher_by_name(session, name) for name in req.teachers]
        unknown = [name for name, row in zip(req.teachers, found, strict=True) if row is None]
        if unknown:
            known = [t.name for t in registry.list_teachers(session)]
            raise _invalid(
                "teachers", f"unknown teacher(s) {_listing(unknown)} (registered teachers: {_listing(known)})"
            )
        teachers = [row for row in found if row is not None]
        example_ids = self._select_examples(session, req, dataset)
        k = 0 if req.in_context.strategy == "none" else req.in_context.k
        if k:
            pool = (
                session.scalar(
                    select(func.count())
                    .select_from(m.Example)
                    .where(m.Example.dataset_id == dataset.id, m.Example.split == req.split)
                )
                or 0
            )
            if k > pool - 1:
                raise _invalid(
                    "in_context.k",
                    f"k={k} demonstrations need at least {k + 1} examples in '{dataset.name}/{req.split}' "
                    f"(the target is never its own demonstration); it has {pool} "
                    f"(accepted: 0..{max(pool - 1, 0)})",
                )
        # The overrides must make valid parameters for every teacher they are merged into.
        overrides = req.generation.model_dump(exclude_none=True)
        for teacher in teachers:
            spec = registry.spec_from_row(teacher)
            try:
                spec.params.model_validate({**spec.params.model_dump(), **overrides})
            except ValueError as exc:
                raise _invalid("generation", f"invalid for teacher '{teacher.name}': {exc}") from None
        return dataset, teachers, example_ids

    def create(
        self, session: Session, req: p.CreateRationaleJob, idempotency_key: str | None
    ) -> tuple[p.RationaleJob, bool]:
        """Validate, store and enqueue a job; (view, created). A repeated key returns the first job."""
        digest = request_hash(req)
        if idempotency_key is not None:
            if not idempotency_key.strip() or len(idempotency_key) > 200:
                raise APIError(
                    422,
                    f"{IDEMPOTENCY_HEADER}: must be 1 to 200 characters",
                    param=IDEMPOTENCY_HEADER,
                    code="invalid_value",
                )
            existing = session.scalars(
                select(m.RationaleJob).where(m.RationaleJob.idempotency_key == idempotency_key)
            ).one_or_none()
            if existing is not None:
                return self._replay(session, existing, digest), False
        dataset, teachers, example_ids = self._validate(session, req)
        params = {
            "teachers": req.teachers,
            "in_context": req.in_context.model_dump(),
            "samples_per_example": req.samples_per_example,
            "generation": req.generation.model_dump(exclude_none=True),
            "selection": {"limit": req.limit, "ids": len(req.ids) if req.ids else None},
            "request_hash": digest,
        }
        job, created = jobs.create_job(
            session,
            dataset_id=dataset.id,
            split=req.split,
            example_ids=example_ids,
            teacher_ids=[t.id for t in teachers],
            samples_per_example=req.samples_per_example,
            params=params,
            idempotency_key=idempotency_key,
        )
        if not created:  # lost a race with the same key
            return self._replay(session, job, digest), False
        # Committed before enqueueing: a worker must find the row the task names.
        session.commit()
        self._enqueue(job.id)
        log.info("job %s: %d examples x %d teacher(s) queued", job.id, len(example_ids), len(teachers))
        return self.view(session, job), True

    def _replay(self, session: Session, job: m.RationaleJob, digest: str) -> p.RationaleJob:
        if job.params.get("request_hash") != digest:
            raise APIError(
                409,
                f"{IDEMPOTENCY_HEADER} was already used for job {job.id} with a different request; "
                "use a new key for a new job",
                param=IDEMPOTENCY_HEADER,
                code="idempotency_key_reused",
            )
        if job.status == jobs.QUEUED:
            # The first request may have died between storing the job and enqueueing it; starting twice
            # is harmless (the first start wins the row lock).
            self._enqueue(job.id)
        return self.view(session, job)

    def _enqueue(self, job_id: str) -> None:
        try:
            self.celery.send_task(TASK_START_JOB, args=[job_id])
        except Exception as exc:
            log.error("job %s: cannot enqueue (%s)", job_id, type(exc).__name__)
            raise APIError(
                503,
                f"job {job_id} is stored but the queue is unreachable; repeat the request with the same "
                f"{IDEMPOTENCY_HEADER} to enqueue it",
                code="queue_unavailable",
            ) from None

    # ------------------------------------------------------------------------------------------ read

    def get_row(self, session: Session, job_id: str) -> m.RationaleJob:
        job = jobs.get_job(session, job_id)
        if job is None:
            raise APIError(404, f"no rationale job '{job_id}'", param="job_id", code="job_not_found")
        return job

    def view(self, session: Session, job: m.RationaleJob) -> p.RationaleJob:
        progress = [
            p.TeacherProgress(
                teacher=name,
                total=jt.total,
                done=jt.done,
                failed=jt.failed,
                prompt_tokens=jt.prompt_tokens,
                completion_tokens=jt.completion_tokens,
            )
            for jt, name in jobs.teacher_progress(session, job.id)
        ]
        failures, error_count = jobs.recent_failures(session, job.id, ERRORS_SHOWN)
        prompt = sum(t.prompt_tokens for t in progress)
        completion = sum(t.completion_tokens for t in progress)
        dataset = session.get(m.Dataset, job.dataset_id)
        params = job.params or {}
        return p.RationaleJob(
            id=job.id,
            kind=cast(p.JobKind, job.kind),
            status=job.status,
            dataset=dataset.name if dataset else str(job.dataset_id),
            split=job.split,
            teachers=[t.teacher for t in progress],
            in_context=params.get("in_context", {}),
            samples_per_example=int(params.get("samples_per_example", 1)),
            generation=params.get("generation", {}),
            total=job.total,
            done=sum(t.done for t in progress),
            failed=sum(t.failed for t in progress),
            progress=progress,
            usage=p.Usage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            ),
            errors=[
                p.JobError(example_id=e, teacher=t, sample_index=s, error=err, attempts=a)
                for e, t, s, err, a in failures
            ],
            error_count=error_count,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )

    def get(self, session: Session, job_id: str) -> p.RationaleJob:
        view = self.view(session, self.get_row(session, job_id))
        if view.status == jobs.RUNNING and view.done + view.failed >= view.total:
            # Every item is settled but the job is still open (a lost finisher): ask again; idempotent.
            try:
                self.celery.send_task(TASK_FINISH_JOB, args=[job_id])
            except Exception:
                log.warning("job %s: cannot enqueue a completion check", job_id)
        return view

    def list(self, session: Session, query: p.JobQuery) -> p.RationaleJobList:
        rows, has_more = jobs.list_jobs(
            session, limit=query.limit, after=query.after, status=query.status, kind=query.kind
        )
        return p.RationaleJobList.of([self.view(session, row) for row in rows], has_more)

    def snapshot(self, session: Session, job_id: str) -> Snapshot:
        """The job as its progress stream sees it (see `distillery_gateway.progress`)."""
        view = self.view(session, self.get_row(session, job_id))
        return Snapshot(str(view.done + view.failed), view.model_dump_json(), view.status in jobs.TERMINAL)

    def cancel(self, session: Session, job_id: str) -> p.RationaleJob:
        job = self.get_row(session, job_id)
        if job.status in (jobs.COMPLETED, jobs.COMPLETED_WITH_ERRORS, jobs.FAILED):
            raise APIError(
                409,
                f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled",
                param="job_id",
                code="job_finished",
            )
        job = jobs.cancel_job(session, job_id) or job
        session.commit()
        log.info("job %s: cancelled", job_id)
        return self.view(session, job)

    def _check_teachers(self, session: Session, job: m.RationaleJob, names: Sequence[str] | None) -> None:
        if not names:
            return
        own = [name for _, name in jobs.teacher_progress(session, job.id)]
        unknown = [n for n in names if n not in own]
        if unknown:
            raise _invalid(
                "teacher",
                f"job {job.id} has no teacher(s) {_listing(unknown)} (its teachers: {_listing(own)})",
            )

    def rationales(self, session: Session, job_id: str, query: p.RationaleQuery) -> p.RationaleList:
        self._check_teachers(
            session, self.get_row(session, job_id), [query.teacher] if query.teacher else None
        )
        rows, has_more = rat_store.list_rationales(session, job_id, query)
        return p.RationaleList.of([p.Rationale.model_validate(row) for row in rows], has_more)

    def export(self, session: Session, job_id: str, teachers: builtins.list[str] | None) -> Iterator[bytes]:
        """The job's rationales in the exchange format, one JSON line each, streamed from the database.

        Checked here, before streaming starts (once the body is on its way, a status code cannot
        change). The stream reads a page at a time, each in a short transaction of its own, so a
        client that reads slowly holds no pooled connection while it does.
        """
        self._check_teachers(session, self.get_row(session, job_id), teachers)
        lines = rat_store.export_pages(self.database_url, job_id, teachers or None)
        return ((rat_store.dump_line(line) + "\n").encode() for line in lines)
