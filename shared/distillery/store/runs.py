"""Training runs: creation (idempotent), status transitions, progress, cancellation, the per-run lock.

Statuses: queued -> running -> completed | failed | cancelled; `cancelling` is a running run asked to stop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import Function

from distillery.store import models as m
from distillery.store.db import get_engine

STATUSES = ("queued", "running", "cancelling", "completed", "failed", "cancelled")
ACTIVE = ("queued", "running", "cancelling")
FINISHED = ("completed", "failed", "cancelled")


def create_run(
    session: Session, config: dict[str, Any], idempotency_key: str | None = None
) -> tuple[m.TrainingRun, bool]:
    """Insert a queued run, or return the run made earlier with the same idempotency key -> (run, created)."""
    if idempotency_key is None:
        row = m.TrainingRun(config=config, status="queued", idempotency_key=None)
        session.add(row)
        session.flush()
        return row, True
    stmt = (
        insert(m.TrainingRun)
        .values(
            id=m.new_id(),
            config=config,
            status="queued",
            idempotency_key=idempotency_key,
            loss_curve=[],
            metrics={},
            step=0,
            total_steps=0,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(m.TrainingRun.id)
    )
    new_id = session.scalar(stmt)
    row = session.scalars(select(m.TrainingRun).where(m.TrainingRun.idempotency_key == idempotency_key)).one()
    return row, new_id is not None


def get_run(session: Session, run_id: str) -> m.TrainingRun | None:
    return session.get(m.TrainingRun, run_id)


def list_runs(
    session: Session, status: str | None = None, limit: int = 50, after: str | None = None
) -> list[m.TrainingRun]:
    """Newest first; `after` is the id of the last run of the previous page."""
    run = m.TrainingRun
    stmt = select(run).order_by(run.created_at.desc(), run.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(run.status == status)
    if after and (anchor := session.get(run, after)) is not None:
        stmt = stmt.where(tuple_(run.created_at, run.id) < tuple_(anchor.created_at, anchor.id))
    return list(session.scalars(stmt))


def run_model(session: Session, run_id: str) -> m.Model | None:
    """The registry entry a run produced, if any."""
    stmt = select(m.Model).where(m.Model.training_run_id == run_id).order_by(m.Model.version.desc()).limit(1)
    return session.scalars(stmt).one_or_none()


def mark_running(session: Session, run_id: str, checkpoint_dir: str) -> m.TrainingRun | None:
    """queued/running -> running (a resumed run keeps its start time); None if it is not runnable."""
    row = session.get(m.TrainingRun, run_id, with_for_update=True)
    if row is None or row.status not in ("queued", "running"):
        return None
    row.status = "running"
    row.started_at = row.started_at or datetime.now(UTC)
    row.checkpoint_dir = checkpoint_dir
    row.error = None
    return row


def record_progress(
    session: Session, run_id: str, step: int, total_steps: int, points: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Set step/total and append loss-curve points (a JSONB append, no read-modify-write)."""
    values: dict[str, Any] = {"step": step, "total_steps": total_steps}
    if points:
        values["loss_curve"] = m.TrainingRun.loss_curve.op("||")(literal(list(points), type_=JSONB))
    session.execute(update(m.TrainingRun).where(m.TrainingRun.id == run_id).values(**values))


def reset_curve(session: Session, run_id: str, step: int, curve: Sequence[Mapping[str, Any]]) -> None:
    """Set a resumed run back to its checkpoint: step and the loss curve logged up to it."""
    row = session.get(m.TrainingRun, run_id, with_for_update=True)
    if row is not None:
        row.loss_curve = [dict(point) for point in curve]
        row.step = step


def finish_run(
    session: Session,
    run_id: str,
    status: str,
    *,
    metrics: dict[str, Any] | None = None,
    output_dir: str | None = None,
    error: str | None = None,
) -> None:
    """End a run with a final status, its results (a completed run) or its error (a failed one)."""
    if status not in FINISHED:
        raise ValueError(f"status {status!r} is not a final status ({', '.join(FINISHED)})")
    row = session.get(m.TrainingRun, run_id, with_for_update=True)
    if row is None:
        return
    row.status = status
    row.finished_at = datetime.now(UTC)
    if metrics is not None:
        row.metrics = metrics
    if output_dir is not None:
        row.output_dir = output_dir
    row.error = error


def request_cancel(session: Session, run_id: str) -> m.TrainingRun | None:
    """queued -> cancelled at once; running -> cancelling (the trainer stops at its next step). Idempotent."""
    row = session.get(m.TrainingRun, run_id, with_for_update=True)
    if row is None:
        return None
    if row.status == "queued":
        row.status = "cancelled"
        row.finished_at = datetime.now(UTC)
    elif row.status == "running":
        row.status = "cancelling"
    return row


def requeue(session: Session, run_id: str) -> m.TrainingRun | None:
    """A failed or cancelled run back to queued (it resumes from its last checkpoint when run again)."""
    row = session.get(m.TrainingRun, run_id, with_for_update=True)
    if row is not None and row.status in ("failed", "cancelled"):
        row.status = "queued"
        row.error = None
        row.finished_at = None
    return row


def status_of(session: Session, run_id: str) -> str | None:
    return session.scalar(select(m.TrainingRun.status).where(m.TrainingRun.id == run_id))


def runs_with_status(session: Session, statuses: Sequence[str]) -> list[str]:
    stmt = (
        select(m.TrainingRun.id)
        .where(m.TrainingRun.status.in_(list(statuses)))
        .order_by(m.TrainingRun.created_at)
    )
    return list(session.scalars(stmt))


def _lock_key(run_id: str) -> Function[int]:
    return func.hashtext(f"training_run:{run_id}")


class RunLock:
    """A run's advisory lock as `run_lock` yields it: true when taken; `held()` says whether it still is."""

    def __init__(self, conn: Connection, run_id: str, got: bool) -> None:
        self._conn, self._run_id, self._got = conn, run_id, got

    def __bool__(self) -> bool:
        return self._got

    def held(self) -> bool:
        """Whether this connection still holds the lock: False once the connection (and with it the lock)
        was lost to a PostgreSQL restart, a proxy's idle timeout or `pg_terminate_backend`."""
        if not self._got:
            return False
        try:
            # Session advisory locks are re-entrant: taking it again succeeds only for its holder.
            still = bool(self._conn.scalar(select(func.pg_try_advisory_lock(_lock_key(self._run_id)))))
            if still:
                self._conn.execute(select(func.pg_advisory_unlock(_lock_key(self._run_id))))
            self._conn.commit()
        except DBAPIError:
            still = False
        if not still:
            self._got = False
        return still


@contextmanager
def run_lock(database_url: str, run_id: str) -> Iterator[RunLock]:
    """Hold PostgreSQL's session advisory lock of a run while the block runs; yields a false `RunLock` if
    another process holds it. The server drops the lock when the holder's connection dies (kill -9
    included), so a crashed trainer never leaves a run locked; the holder sees the loss with `held()`."""
    with get_engine(database_url).connect() as conn:
        got = bool(conn.scalar(select(func.pg_try_advisory_lock(_lock_key(run_id)))))
        conn.commit()
        lock = RunLock(conn, run_id, got)
        try:
            yield lock
        finally:
            if lock:
                with suppress(DBAPIError):  # a lost connection took the lock with it
                    conn.execute(select(func.pg_advisory_unlock(_lock_key(run_id))))
                    conn.commit()


def is_locked(conn: Connection | Session, run_id: str) -> bool:
    """True if some live process holds the run's lock (checked by trying it, then letting go)."""
    got = bool(conn.scalar(select(func.pg_try_advisory_lock(_lock_key(run_id)))))
    if got:
        conn.execute(select(func.pg_advisory_unlock(_lock_key(run_id))))
    return not got
