"""Rationale jobs: creation (idempotent), item slices for the fan-out, progress, completion and listings.

The gateway writes jobs here and the worker reads and advances them; the row is the only state they
share. Progress counters on `job_teacher` are bumped in the same transaction as the rationale (or failure)
they count, so they never drift; `reconcile` recounts from the rows anyway before it ends a job.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, exists, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, defer
from sqlalchemy.sql.expression import ColumnClause

from distillery.store import models as m

QUEUED, RUNNING = "queued", "running"
COMPLETED, COMPLETED_WITH_ERRORS = "completed", "completed_with_errors"
CANCELLED, FAILED = "cancelled", "failed"
STATUSES = (QUEUED, RUNNING, COMPLETED, COMPLETED_WITH_ERRORS, CANCELLED, FAILED)
TERMINAL = frozenset({COMPLETED, COMPLETED_WITH_ERRORS, CANCELLED, FAILED})
# PostgreSQL notification channel: the id of a job cancelled, sent when the cancel commits.
CANCEL_CHANNEL = "distillery_job_cancelled"


def create_job(
    session: Session,
    *,
    dataset_id: int,
    split: str,
    example_ids: Sequence[int],
    teacher_ids: Sequence[int],
    samples_per_example: int,
    params: dict[str, Any],
    idempotency_key: str | None = None,
) -> tuple[m.RationaleJob, bool]:
    """Insert a queued job and its per-teacher rows; (job, created). A repeated idempotency key returns
    the existing job (created=False), also when two requests race."""
    per_teacher = len(example_ids) * samples_per_example
    values = {
        "id": m.new_id(),
        "kind": "generate",
        "status": QUEUED,
        "dataset_id": dataset_id,
        "split": split,
        "params": {**params, "example_ids": list(example_ids), "teacher_ids": list(teacher_ids)},
        "idempotency_key": idempotency_key,
        "total": per_teacher * len(teacher_ids),
    }
    stmt = insert(m.RationaleJob).values(**values)
    if idempotency_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"])
    inserted = session.execute(stmt.returning(m.RationaleJob.id)).scalar_one_or_none()
    if inserted is None:
        existing = session.scalars(
            select(m.RationaleJob).where(m.RationaleJob.idempotency_key == idempotency_key)
        ).one()
        return existing, False
    session.add_all(
        m.JobTeacher(job_id=inserted, teacher_id=tid, total=per_teacher) for tid in dict.fromkeys(teacher_ids)
    )
    session.flush()
    job = session.get(m.RationaleJob, inserted)
    assert job is not None
    return job, True


def get_job(session: Session, job_id: str) -> m.RationaleJob | None:
    return session.get(m.RationaleJob, job_id)


def chunk_job(session: Session, job_id: str) -> m.RationaleJob | None:
    """The job as a chunk needs it: status, dataset, split and params without the item list.

    A detached copy: the item list (`params["example_ids"]`, a million ids in a large job) stays in
    the database instead of being parsed for every chunk.
    """
    j = m.RationaleJob
    row = session.execute(
        select(
            j.status,
            j.dataset_id,
            j.split,
            j.total,
            j.params["samples_per_example"],
            j.params["in_context"],
            j.params["generation"],
        ).where(j.id == job_id)
    ).one_or_none()
    if row is None:
        return None
    status, dataset_id, split, total, samples, in_context, generation = row
    params = {
        "samples_per_example": samples or 1,
        "in_context": in_context or {},
        "generation": generation or {},
    }
    return m.RationaleJob(
        id=job_id, status=status, dataset_id=dataset_id, split=split, total=total, params=params
    )


def item_count(session: Session, job_id: str) -> int:
    """How many examples the job covers (per teacher), without loading them."""
    ids = m.RationaleJob.params["example_ids"]
    count = session.scalar(select(func.jsonb_array_length(ids)).where(m.RationaleJob.id == job_id))
    return int(count or 0)


def example_slice(session: Session, job_id: str, start: int, stop: int) -> list[int]:
    """The job's example ids [start, stop) in plan order, sliced in the database."""
    if stop <= start:
        return []
    ids = m.RationaleJob.params["example_ids"]
    path: ColumnClause[Any] = literal_column(f"'$[{int(start)} to {int(stop) - 1}]'::jsonpath")
    found = session.scalar(select(func.jsonb_path_query_array(ids, path)).where(m.RationaleJob.id == job_id))
    return [int(i) for i in found or []]


def job_status(session: Session, job_id: str) -> str | None:
    """The job's status alone (cheap: workers ask it before every teacher call)."""
    return session.scalar(select(m.RationaleJob.status).where(m.RationaleJob.id == job_id))


def list_jobs(
    session: Session,
    limit: int = 20,
    after: str | None = None,
    status: str | None = None,
    kind: str | None = None,
) -> tuple[list[m.RationaleJob], bool]:
    """Newest first; `after` is the id of the last job of the previous page. Returns (jobs, has_more)."""
    stmt = select(m.RationaleJob).order_by(m.RationaleJob.created_at.desc(), m.RationaleJob.id.desc())
    if kind:
        stmt = stmt.where(m.RationaleJob.kind == kind)
    if status:
        stmt = stmt.where(m.RationaleJob.status == status)
    if after:
        anchor = session.get(m.RationaleJob, after)
        if anchor is not None:
            stmt = stmt.where(
                func.row(m.RationaleJob.created_at, m.RationaleJob.id)
                < func.row(anchor.created_at, anchor.id)
            )
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def teacher_progress(session: Session, job_id: str) -> list[tuple[m.JobTeacher, str]]:
    """(progress row, teacher name) per teacher of the job, in teacher-id order."""
    stmt = (
        select(m.JobTeacher, m.Teacher.name)
        .join(m.Teacher, m.Teacher.id == m.JobTeacher.teacher_id)
        .where(m.JobTeacher.job_id == job_id)
        .order_by(m.JobTeacher.teacher_id)
    )
    return [(row, name) for row, name in session.execute(stmt)]


def claim_for_start(session: Session, job_id: str) -> m.RationaleJob | None:
    """Lock a queued job so that exactly one starter fans it out; None if it is not queued."""
    job = session.get(m.RationaleJob, job_id, with_for_update=True)
    return job if job is not None and job.status == QUEUED else None


def mark_running(job: m.RationaleJob) -> None:
    job.status = RUNNING
    job.started_at = datetime.now(UTC)


def cancel_job(session: Session, job_id: str) -> m.RationaleJob | None:
    """Set a queued/running job `cancelled` (workers stop before their next teacher call)."""
    job = session.get(m.RationaleJob, job_id, with_for_update=True)
    if job is None:
        return None
    if job.status not in TERMINAL:
        job.status = CANCELLED
        job.finished_at = datetime.now(UTC)
        _sum_tokens(session, job)
        # Workers listening stop the job's teacher calls at once (delivered only if this commits).
        session.execute(select(func.pg_notify(CANCEL_CHANNEL, job_id)))
    return job


def settled_items(
    session: Session, job_id: str, teacher_id: int, example_ids: Sequence[int]
) -> set[tuple[int, int]]:
    """(example id, sample index) pairs of this teacher that already have a rationale or a final failure."""
    keys: set[tuple[int, int]] = set()
    for model in (m.Rationale, m.RationaleFailure):
        stmt = select(model.example_id, model.sample_index).where(
            model.job_id == job_id, model.teacher_id == teacher_id, model.example_id.in_(list(example_ids))
        )
        keys.update((e, s) for e, s in session.execute(stmt))
    return keys


def add_progress(
    session: Session,
    job_id: str,
    teacher_id: int,
    *,
    done: int = 0,
    failed: int = 0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> None:
    """Bump a teacher's counters in place (atomic under concurrent chunks: no read-modify-write)."""
    jt = m.JobTeacher
    session.execute(
        update(jt)
        .where(jt.job_id == job_id, jt.teacher_id == teacher_id)
        .values(
            done=jt.done + done,
            failed=jt.failed + failed,
            prompt_tokens=jt.prompt_tokens + prompt_tokens,
            completion_tokens=jt.completion_tokens + completion_tokens,
        )
    )


def fail_item(
    session: Session,
    job_id: str,
    teacher_id: int,
    example_id: int,
    sample_index: int,
    error: str,
    attempts: int,
) -> None:
    """Record an item that gave up for good, counting it once however often (and however concurrently) it
    is recorded: the failure's upsert says whether this call inserted it."""
    from distillery.store.rationales import record_failure

    if record_failure(session, job_id, example_id, teacher_id, sample_index, error, attempts):
        add_progress(session, job_id, teacher_id, failed=1)


def _recount(session: Session, job: m.RationaleJob) -> None:
    """Set every teacher's counters from the stored rows (the truth), whatever the counters said."""
    r, f = m.Rationale, m.RationaleFailure
    stored = dict(
        (tid, (n, p, c))
        for tid, n, p, c in session.execute(
            select(
                r.teacher_id,
                func.count(),
                func.coalesce(func.sum(r.prompt_tokens), 0),
                func.coalesce(func.sum(r.completion_tokens), 0),
            )
            .where(r.job_id == job.id)
            .group_by(r.teacher_id)
        )
    )
    # A failure later filled by a rationale (a re-run) counts as done, not twice.
    filled = exists().where(
        and_(
            r.job_id == f.job_id,
            r.example_id == f.example_id,
            r.teacher_id == f.teacher_id,
            r.sample_index == f.sample_index,
        )
    )
    failed = dict(
        session.execute(
            select(f.teacher_id, func.count()).where(f.job_id == job.id, ~filled).group_by(f.teacher_id)
        ).all()
    )
    for jt in session.scalars(select(m.JobTeacher).where(m.JobTeacher.job_id == job.id)):
        n, p, c = stored.get(jt.teacher_id, (0, 0, 0))
        jt.done, jt.prompt_tokens, jt.completion_tokens = n, int(p or 0), int(c or 0)
        jt.failed = failed.get(jt.teacher_id, 0)


def _sum_tokens(session: Session, job: m.RationaleJob) -> None:
    jt = m.JobTeacher
    p, c = session.execute(
        select(
            func.coalesce(func.sum(jt.prompt_tokens), 0), func.coalesce(func.sum(jt.completion_tokens), 0)
        ).where(jt.job_id == job.id)
    ).one()
    job.prompt_tokens, job.completion_tokens = int(p), int(c)


def reconcile(session: Session, job_id: str) -> m.RationaleJob | None:
    """End a running job whose items are all stored or failed; safe to call any number of times.

    The job row stays locked until the transaction ends (the worker tops up its chunk window under it).
    """
    # Without the item list: reconcile runs after every chunk.
    job = session.get(m.RationaleJob, job_id, with_for_update=True, options=[defer(m.RationaleJob.params)])
    if job is None or job.status != RUNNING:
        return job
    jt = m.JobTeacher
    settled = session.scalar(
        select(func.coalesce(func.sum(jt.done + jt.failed), 0)).where(jt.job_id == job_id)
    )
    if (settled or 0) < job.total:
        return job
    # The counters say done; confirm from the rows before ending the job.
    _recount(session, job)
    session.flush()
    done, failed = session.execute(
        select(func.coalesce(func.sum(jt.done), 0), func.coalesce(func.sum(jt.failed), 0)).where(
            jt.job_id == job_id
        )
    ).one()
    if done + failed < job.total:
        return job
    job.status = COMPLETED_WITH_ERRORS if failed else COMPLETED
    job.finished_at = datetime.now(UTC)
    _sum_tokens(session, job)
    return job


def recent_failures(session: Session, job_id: str, limit: int = 20) -> tuple[list[tuple[Any, ...]], int]:
    """([(example external id, teacher name, sample index, error, attempts)], total failures)."""
    f = m.RationaleFailure
    total = session.scalar(select(func.count()).select_from(f).where(f.job_id == job_id)) or 0
    stmt = (
        select(m.Example.external_id, m.Teacher.name, f.sample_index, f.error, f.attempts)
        .join(m.Example, m.Example.id == f.example_id)
        .join(m.Teacher, m.Teacher.id == f.teacher_id)
        .where(f.job_id == job_id)
        .order_by(f.id)
        .limit(limit)
    )
    return [tuple(row) for row in session.execute(stmt)], total
