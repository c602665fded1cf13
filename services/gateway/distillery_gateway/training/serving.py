"""Training runs behind the routes: checks against the stored data, creation, views, progress, cancel.

The gateway never trains: it writes the run row and enqueues TASK_TRAIN by name on queue `train`;
the trainer reports back through the same row.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import cast

from celery import Celery
from sqlalchemy.orm import Session

from distillery.distill.checks import ConfigError, resolve_run
from distillery.distill.config import TrainConfig
from distillery.queue import QUEUE_TRAIN, TASK_TRAIN
from distillery.store import models as m
from distillery.store import runs as run_store
from distillery_gateway.accepted import IDEMPOTENCY_HEADER
from distillery_gateway.errors import APIError
from distillery_gateway.progress import Snapshot
from distillery_gateway.training import protocol as p

log = logging.getLogger(__name__)


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


class TrainingService:
    """Training-run operations; built once per app (with the Celery app it enqueues on), each call given
    the request's database session."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def create(
        self, session: Session, body: TrainConfig, idempotency_key: str | None = None
    ) -> tuple[p.TrainingRun, bool]:
        """Check, store and enqueue a run -> (view, created). Nothing is written when a check fails."""
        try:
            resolve_run(session, body)
        except ConfigError as exc:
            raise APIError(422, str(exc), param=exc.field, code="invalid_value") from None
        config = body.model_dump(mode="json")
        row, created = run_store.create_run(session, config, idempotency_key)
        if not created:
            if row.config != config:
                raise APIError(
                    409,
                    f"{IDEMPOTENCY_HEADER} '{idempotency_key}' was used for another training run ({row.id})",
                    param=IDEMPOTENCY_HEADER,
                    code="idempotency_conflict",
                )
            return self.view(session, row), False
        # The trainer must find the row when the message arrives: commit before enqueueing.
        session.commit()
        try:
            self.celery.send_task(TASK_TRAIN, args=[row.id], queue=QUEUE_TRAIN)
        except Exception as exc:
            log.error("could not queue training run %s: %s", row.id, type(exc).__name__)
            run_store.finish_run(session, row.id, "failed", error="the task queue was unavailable")
            session.commit()
            raise APIError(
                503, "the task queue is unavailable; try again", code="queue_unavailable"
            ) from None
        log.info("training run %s queued (%s of %s on %s)", row.id, body.method, body.student, body.dataset)
        return self.view(session, row), True

    def get_row(self, session: Session, run_id: str) -> m.TrainingRun:
        row = run_store.get_run(session, run_id)
        if row is None:
            raise APIError(404, f"no training run '{run_id}'", param="run_id", code="not_found")
        return row

    def get(self, session: Session, run_id: str) -> p.TrainingRun:
        return self.view(session, self.get_row(session, run_id))

    def list(self, session: Session, query: p.RunQuery) -> p.TrainingRunList:
        rows = run_store.list_runs(session, query.status, query.limit + 1, after=query.after)
        views = [self.view(session, r) for r in rows[: query.limit]]
        return p.TrainingRunList.of(views, has_more=len(rows) > query.limit)

    def snapshot(self, session: Session, run_id: str) -> Snapshot:
        """The run as its progress stream sees it (see `distillery_gateway.progress`)."""
        view = self.view(session, self.get_row(session, run_id))
        event = p.TrainingRunEvent(
            id=view.id,
            status=view.status,
            step=view.step,
            total_steps=view.total_steps,
            progress=view.progress,
            last_loss=view.loss_curve[-1].model_dump() if view.loss_curve else None,
            metrics=view.metrics if view.status in run_store.FINISHED else None,
            error=view.error,
        )
        return Snapshot(str(view.step), event.model_dump_json(), view.status in run_store.FINISHED)

    def cancel(self, session: Session, run_id: str) -> p.TrainingRun:
        row = run_store.request_cancel(session, run_id) or self.get_row(session, run_id)
        session.flush()
        return self.view(session, row)

    def view(self, session: Session, row: m.TrainingRun) -> p.TrainingRun:
        config = TrainConfig.model_validate(row.config)
        model_id = (row.metrics or {}).get("model_id")
        if model_id is None and row.status == "completed":
            model = run_store.run_model(session, row.id)
            model_id = model.id if model else None
        total = row.total_steps or 0
        return p.TrainingRun(
            id=row.id,
            status=cast(p.RunStatus, row.status),
            method=config.method,
            student=config.student,
            dataset=config.dataset,
            step=row.step or 0,
            total_steps=total,
            progress=round(min(1.0, (row.step or 0) / total), 4)
            if total
            else (1.0 if row.status == "completed" else 0.0),
            loss_curve=[p.LossPoint(**pt) for pt in row.loss_curve or []],
            metrics=row.metrics or {},
            model_id=model_id,
            output_dir=row.output_dir,
            error=row.error,
            config=config,
            created_at=_ts(row.created_at) or 0,
            started_at=_ts(row.started_at),
            finished_at=_ts(row.finished_at),
        )
