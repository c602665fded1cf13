"""Rationale jobs behind the routes: validation against the stored data, creation, views, cancel.

The gateway never runs a job: it writes the job row and enqueues `start_job` by name; workers do the
rest and report through the same rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

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
    """Job operations for one request: its database session and the Celery app it enqueues on."""

    def __init__(self, session: Session, celery: Celery):
        self.session = session
        self.celery = celery

    # ------------------------------------------------------------------------------------------ create

    def _select_examples(self, req: p.CreateRationaleJob, dataset: m.Dataset) -> list[int]:
        base = select(m.Example.id, m.Example.external_id).where(
            m.Example.dataset_id == dataset.id, m.Example.split == req.split
        )
        if req.ids is not None:
            found = dict(
                (ext, row_id)
                for row_id, ext in self.session.execute(base.where(m.Example.external_id.in_(req.ids)))
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
        selected = [row_id for row_id, _ in self.session.execute(stmt)]
        if not selected:
            splits = [split for name, split, _ in ex_store.split_counts(self.session) if name == dataset.name]
            raise _invalid(
                "split",
                f"dataset '{dataset.name}' has no examples in split '{req.split}' "
                f"(splits with examples: {_listing(splits)})",
            )
        return selected

    def _validate(self, req: p.CreateRationaleJob) -> tuple[m.Dataset, list[m.Teacher], list[int]]:
        dataset = ex_store.find_dataset(self.session, req.dataset)
        if dataset is None:
            known = ex_store.dataset_names(self.session)
            raise _invalid("dataset", f"unknown dataset '{req.dataset}' (stored datasets: {_listing(known)})")
        teachers = [registry.get_teacher_by_name(self.session, name) for name in req.teachers]
        unknown = [name for name, row in zip(req.teachers, teachers, strict=True) if row is None]
        if unknown:
            known = [t.name for t in registry.list_teachers(self.session)]
            raise _invalid(
                "teachers", f"unknown teacher(s) {_listing(unknown)} (registered teachers: {_listing(known)})"
            )
        example_ids = self._select_examples(req, dataset)
        k = 0 if req.in_context.strategy == "none" else req.in_context.k
        if k:
            pool = self.session.scalar(
                select(func.count())
                .select_from(m.Example)
                .where(m.Example.dataset_id == dataset.id, m.Example.split == req.split)
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
        return dataset, teachers, example_ids  # type: ignore[return-value]

    def create(self, req: p.CreateRationaleJob, idempotency_key: str | None) -> tuple[p.RationaleJob, bool]:
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
            existing = self.session.scalars(
                select(m.RationaleJob).where(m.RationaleJob.idempotency_key == idempotency_key)
            ).one_or_none()
            if existing is not None:
                return self._replay(existing, digest), False
        dataset, teachers, example_ids = self._validate(req)
        params = {
            "teachers": req.teachers,
            "in_context": req.in_context.model_dump(),
            "samples_per_example": req.samples_per_example,
            "generation": req.generation.model_dump(exclude_none=True),
            "selection": {"limit": req.limit, "ids": len(req.ids) if req.ids else None},
            "request_hash": digest,
        }
        job, created = jobs.create_job(
            self.session,
            dataset_id=dataset.id,
            split=req.split,
            example_ids=example_ids,
            teacher_ids=[t.id for t in teachers],
            samples_per_example=req.samples_per_example,
            params=params,
            idempotency_key=idempotency_key,
        )
        if not created:  # lost a race with the same key
            return self._replay(job, digest), False
        # Committed before enqueueing: a worker must find the row the task names.
        self.session.commit()
        self._enqueue(job.id)
        log.info("job %s: %d examples x %d teacher(s) queued", job.id, len(example_ids), len(teachers))
        return self.view(job), True

    def _replay(self, job: m.RationaleJob, digest: str) -> p.RationaleJob:
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
        return self.view(job)

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

    def get_row(self, job_id: str) -> m.RationaleJob:
        job = jobs.get_job(self.session, job_id)
        if job is None:
            raise APIError(404, f"no rationale job '{job_id}'", param="job_id", code="job_not_found")
        return job

    def view(self, job: m.RationaleJob) -> p.RationaleJob:
        progress = [
            p.TeacherProgress(
                teacher=name,
                total=jt.total,
                done=jt.done,
                failed=jt.failed,
                prompt_tokens=jt.prompt_tokens,
                completion_tokens=jt.completion_tokens,
            )
            for jt, name in jobs.teacher_progress(self.session, job.id)
        ]
        failures, error_count = jobs.recent_failures(self.session, job.id, ERRORS_SHOWN)
        prompt = sum(t.prompt_tokens for t in progress)
        completion = sum(t.completion_tokens for t in progress)
        dataset = self.session.get(m.Dataset, job.dataset_id)
        params = job.params or {}
        return p.RationaleJob(
            id=job.id,
            kind=job.kind,
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

    def get(self, job_id: str) -> p.RationaleJob:
        view = self.view(self.get_row(job_id))
        if view.status == jobs.RUNNING and view.done + view.failed >= view.total:
            # Every item is settled but the job is still open (a lost finisher): ask again; idempotent.
            try:
                self.celery.send_task(TASK_FINISH_JOB, args=[job_id])
            except Exception:
                log.warning("job %s: cannot enqueue a completion check", job_id)
        return view

    def list(self, limit: int, after: str | None, status: str | None, kind: str | None) -> p.RationaleJobList:
        rows, has_more = jobs.list_jobs(
            self.session, limit=limit, after=after, status=status, kind="generate"
        )
        data = [self.view(row) for row in rows]
        return p.RationaleJobList(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    def cancel(self, job_id: str) -> p.RationaleJob:
        job = self.get_row(job_id)
        if job.status in (jobs.COMPLETED, jobs.COMPLETED_WITH_ERRORS, jobs.FAILED):
            raise APIError(
                409,
                f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled",
                param="job_id",
                code="job_finished",
            )
        job = jobs.cancel_job(self.session, job_id)
        self.session.commit()
        log.info("job %s: cancelled", job_id)
        return self.view(job)  # type: ignore[arg-type]

    def _check_teachers(self, job: m.RationaleJob, names: list[str] | None) -> None:
        if not names:
            return
        own = [name for _, name in jobs.teacher_progress(self.session, job.id)]
        unknown = [n for n in names if n not in own]
        if unknown:
            raise _invalid(
                "teacher",
                f"job {job.id} has no teacher(s) {_listing(unknown)} (its teachers: {_listing(own)})",
            )

    def rationales(
        self,
        job_id: str,
        *,
        teacher: str | None,
        truncated: bool | None,
        agrees_with_gold: bool | None,
        example_id: str | None,
        after: int | None,
        limit: int,
    ) -> p.RationaleList:
        job = self.get_row(job_id)
        self._check_teachers(job, [teacher] if teacher else None)
        rows, has_more = jobs.list_rationales(
            self.session,
            job_id,
            teacher=teacher,
            truncated=truncated,
            agrees_with_gold=agrees_with_gold,
            example_id=example_id,
            after=after,
            limit=limit,
        )
        data = [
            p.Rationale(
                id=r.id,
                job_id=r.job_id,
                example_id=ext,
                teacher=name,
                sample_index=r.sample_index,
                text=r.text,
                finish_reason=r.finish_reason,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                latency_ms=r.latency_ms,
                template_version=r.template_version,
                incontext_ids=list(r.incontext_ids or []),
                truncated=r.truncated,
                agrees_with_gold=r.agrees_with_gold,
                duplicate=r.duplicate,
                created_at=r.created_at,
            )
            for r, name, ext in rows
        ]
        return p.RationaleList(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    def export_check(self, job_id: str, teachers: list[str] | None) -> None:
        """Fail before streaming starts: once the body is on its way, a status code cannot change."""
        self._check_teachers(self.get_row(job_id), teachers)


def export_jsonl(session: Session, job_id: str, teachers: list[str] | None) -> Iterator[bytes]:
    """The job's rationales in the exchange format, one JSON line each (streamed from the database)."""
    try:
        for line in rat_store.export_lines(session, job_id, teachers or None):
            yield (rat_store.dump_line(line) + "\n").encode()
    finally:
        session.close()
