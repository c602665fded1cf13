"""Celery tasks of the `rationales` queue (names and arguments: distillery.queue).

start_job sends a job's first wave of chunks, run_chunk generates one chunk and then settles the job
(ends it once every item is stored or failed, else sends the chunks it is owed: fanout.py), finish_job
settles a job on request. All three take ids and are idempotent, so re-delivery is harmless.
"""

from __future__ import annotations

import asyncio
import logging

from celery import Task
from sqlalchemy.orm import Session

from distillery.queue import TASK_FINISH_JOB, TASK_RUN_CHUNK, TASK_START_JOB, TRANSIENT_ERRORS
from distillery.store import jobs
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery_worker import fanout
from distillery_worker.celery_app import DATABASE_URL, REDIS_URL, app, worker_settings
from distillery_worker.chunk import ChunkRun
from distillery_worker.runtime import get_runtime

log = logging.getLogger(__name__)

# Late acks and re-delivery on a lost worker come from the app's config (distillery.queue.make_celery).
_RETRY = {
    "retry_backoff": True,
    "retry_backoff_max": worker_settings.retry_backoff_max,
    "retry_jitter": True,
}


class ItemsToRetry(Exception):
    """Some teacher calls failed retryably (transport, 5xx, timeout); the chunk runs again later."""


@app.task(name=TASK_START_JOB, bind=True, autoretry_for=TRANSIENT_ERRORS, max_retries=10, **_RETRY)
def start_job(self: Task, job_id: str) -> int:
    """Queue the first wave of a queued job's chunks and mark it running; a second delivery finds it
    running. Later waves follow as chunks finish (fanout.py)."""
    with session_scope(DATABASE_URL) as session:
        # The row lock makes concurrent deliveries queue up; the first one fans out, the rest see
        # `running`. Chunks sent before the commit treat `queued` like `running`.
        job = jobs.claim_for_start(session, job_id)
        if job is None:
            return 0
        # No chord: chunks end independently (each settles the job) and progress lives in PostgreSQL.
        sent = _top_up(session, job_id)
        jobs.mark_running(job)
    log.info("job %s: first %d chunks queued", job_id, sent)
    return sent


def _send_chunk(job_id: str) -> fanout.Send:
    return lambda teacher_id, example_ids: app.send_task(
        TASK_RUN_CHUNK, args=[job_id, teacher_id, example_ids]
    )


def _top_up(session: Session, job_id: str) -> int:
    return fanout.top_up(
        session,
        REDIS_URL,
        _send_chunk(job_id),
        job_id,
        worker_settings.chunk_size,
        worker_settings.chunks_in_flight,
    )


def _settle(job_id: str) -> str | None:
    """End the job if every item is stored or failed, else send the chunks it is owed; its status."""
    with session_scope(DATABASE_URL) as session:
        job = jobs.reconcile(session, job_id)
        status = job.status if job is not None else None
        if status in (jobs.RUNNING, jobs.QUEUED):
            _top_up(session, job_id)
    if status in (jobs.COMPLETED, jobs.COMPLETED_WITH_ERRORS):
        log.info("job %s: %s", job_id, status)
    if status in jobs.TERMINAL:
        fanout.forget(REDIS_URL, job_id)
    return status


# Each teacher call is tried `item_attempts` times within a run (tenacity, seconds apart), and the
# chunk runs up to `max_retries` + 1 times (Celery, backoff up to a minute): 3 x 6 = 18 calls per item
# at most with the defaults. Quick tries ride out a blip, Celery retries an outage.
@app.task(
    name=TASK_RUN_CHUNK,
    bind=True,
    autoretry_for=(*TRANSIENT_ERRORS, ItemsToRetry),
    max_retries=worker_settings.max_retries,
    **_RETRY,
)
def run_chunk(self: Task, job_id: str, teacher_id: int, example_ids: list[int]) -> dict:
    """Generate and store what is missing of (job, teacher, examples); retry retryable failures later."""
    final = self.request.retries >= self.max_retries
    run = ChunkRun(
        get_runtime(DATABASE_URL, REDIS_URL),
        DATABASE_URL,
        worker_settings,
        job_id,
        teacher_id,
        list(example_ids),
        attempt=self.request.retries,
        final=final,
    )
    try:
        # The chunk's deadline (below the visibility timeout, settings.py): a chunk past it stops, and
        # its unsettled items are retried later (TimeoutError is transient) or fail on the last try.
        outcome = run.runtime.run(asyncio.wait_for(run.run(), worker_settings.chunk_deadline))
    except Exception as exc:
        if not final and isinstance(exc, TRANSIENT_ERRORS):
            raise
        # Out of retries, or an error no retry cures: the items fail for good rather than leave the job
        # waiting for them forever.
        log.exception("job %s teacher %s: chunk failed for good", job_id, teacher_id)
        _fail_unsettled(
            job_id, teacher_id, list(example_ids), f"{type(exc).__name__}: {exc}", self.request.retries
        )
        _settle(job_id)
        return {"stored": 0, "failed": len(example_ids), "retry": 0}
    if outcome.deferred:
        # A new message before this one is acked: at-least-once holds. The retry count starts over,
        # which is right: nothing was tried.
        app.send_task(TASK_RUN_CHUNK, args=[job_id, teacher_id, list(example_ids)], countdown=1)
        log.info("job %s teacher %s: teacher saturated, chunk deferred", job_id, teacher_id)
        return {"stored": 0, "failed": 0, "retry": 0, "deferred": True}
    _settle(job_id)
    log.info(
        "job %s teacher %s: chunk stored %d, failed %d, skipped %d, to retry %d%s",
        job_id,
        teacher_id,
        outcome.stored,
        outcome.failed,
        outcome.skipped,
        len(outcome.retry),
        " (job over)" if outcome.cancelled else "",
    )
    if outcome.retry and not outcome.cancelled:
        raise ItemsToRetry(f"{len(outcome.retry)} item(s) failed retryably, e.g. {outcome.retry[0][1]}")
    return {"stored": outcome.stored, "failed": outcome.failed, "retry": len(outcome.retry)}


def _fail_unsettled(job_id: str, teacher_id: int, example_ids: list[int], error: str, retries: int) -> None:
    with session_scope(DATABASE_URL) as session:
        job = session.get(m.RationaleJob, job_id)
        if job is None:
            return
        samples = int(job.params.get("samples_per_example", 1))
        settled = jobs.settled_items(session, job_id, teacher_id, example_ids)
        for example_id in example_ids:
            for sample in range(samples):
                if (example_id, sample) in settled:
                    continue
                jobs.fail_item(session, job_id, teacher_id, example_id, sample, error, retries + 1)


@app.task(name=TASK_FINISH_JOB, bind=True, autoretry_for=TRANSIENT_ERRORS, max_retries=10, **_RETRY)
def finish_job(self: Task, job_id: str) -> str | None:
    """End the job if every item is stored or failed, else send the chunks it is owed (re-checkable: any
    number of calls is fine)."""
    return _settle(job_id)
