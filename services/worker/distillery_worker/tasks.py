"""Celery tasks of the `rationales` queue (names and arguments: distillery.queue).

start_job fans a job out into chunks, run_chunk generates one chunk, finish_job ends a job once every
item is stored or failed. All three take ids and are idempotent, so re-delivery is harmless.
"""

from __future__ import annotations

import asyncio
import logging

from distillery.queue import TASK_FINISH_JOB, TASK_RUN_CHUNK, TASK_START_JOB
from distillery.store import jobs
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery_worker.celery_app import DATABASE_URL, REDIS_URL, app, worker_settings
from distillery_worker.chunk import ChunkRun

log = logging.getLogger(__name__)

_RETRY = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry_backoff": True,
    "retry_backoff_max": worker_settings.retry_backoff_max,
    "retry_jitter": True,
}


class ItemsToRetry(Exception):
    """Some teacher calls failed retryably (transport, 5xx, timeout); the chunk runs again later."""


@app.task(name=TASK_START_JOB, bind=True, autoretry_for=(Exception,), max_retries=10, **_RETRY)
def start_job(self, job_id: str) -> int:
    """Queue the chunks of a queued job and mark it running; a second delivery finds it running."""
    with session_scope(DATABASE_URL) as session:
        # The row lock makes concurrent deliveries queue up; the first one fans out, the rest see
        # `running`. Chunks sent before the commit treat `queued` like `running`.
        job = jobs.claim_for_start(session, job_id)
        if job is None:
            return 0
        plan = jobs.chunk_plan(job, worker_settings.chunk_size)
        for chunk in plan:
            app.send_task(TASK_RUN_CHUNK, args=[job_id, chunk.teacher_id, chunk.example_ids])
        jobs.mark_running(job)
    log.info("job %s: %d chunks queued", job_id, len(plan))
    return len(plan)


@app.task(
    name=TASK_RUN_CHUNK,
    bind=True,
    autoretry_for=(Exception,),
    max_retries=worker_settings.max_retries,
    **_RETRY,
)
def run_chunk(self, job_id: str, teacher_id: int, example_ids: list[int]) -> dict:
    """Generate and store what is missing of (job, teacher, examples); retry retryable failures later."""
    final = self.request.retries >= self.max_retries
    run = ChunkRun(
        DATABASE_URL,
        REDIS_URL,
        worker_settings,
        job_id,
        teacher_id,
        list(example_ids),
        attempt=self.request.retries,
        final=final,
    )
    try:
        outcome = asyncio.run(run.run())
    except Exception as exc:
        if not final:
            raise
        # Out of retries on an unexpected error: the items fail for good rather than leave the job
        # waiting for them forever.
        log.exception("job %s teacher %s: chunk failed for good", job_id, teacher_id)
        _fail_unsettled(
            job_id, teacher_id, list(example_ids), f"{type(exc).__name__}: {exc}", self.request.retries
        )
        app.send_task(TASK_FINISH_JOB, args=[job_id])
        return {"stored": 0, "failed": len(example_ids), "retry": 0}
    if outcome.deferred:
        # A new message before this one is acked: at-least-once holds. The retry count starts over,
        # which is right: nothing was tried.
        app.send_task(TASK_RUN_CHUNK, args=[job_id, teacher_id, list(example_ids)], countdown=1)
        log.info("job %s teacher %s: teacher saturated, chunk deferred", job_id, teacher_id)
        return {"stored": 0, "failed": 0, "retry": 0, "deferred": True}
    app.send_task(TASK_FINISH_JOB, args=[job_id])
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


@app.task(name=TASK_FINISH_JOB, bind=True, autoretry_for=(Exception,), max_retries=10, **_RETRY)
def finish_job(self, job_id: str) -> str | None:
    """End the job if every item is stored or failed (re-checkable: any number of calls is fine)."""
    with session_scope(DATABASE_URL) as session:
        job = jobs.reconcile(session, job_id)
        status = job.status if job is not None else None
    if status in (jobs.COMPLETED, jobs.COMPLETED_WITH_ERRORS):
        log.info("job %s: %s", job_id, status)
    return status
