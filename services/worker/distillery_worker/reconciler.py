"""The reconciler: recovers rationale jobs whose queue messages were lost.

Messages go missing when Redis restarts without them (or loses its unacked deliveries), when `start_job`
runs out of retries, or when an enqueue fails. Their job would then wait for good (or for the visibility
timeout). A timer in every worker (`DISTILLERY_RECONCILE_INTERVAL_S`) looks at the unfinished jobs and
notes how many of their items are settled; a job whose count has not moved for
`DISTILLERY_RECONCILE_STALL_S` is stalled:

* still `queued`: its `start_job` is sent again (a second delivery finds it running and does nothing);
* `running`: its fan-out cursor is dropped and `finish_job` sent, which settles the job and sends the
  chunks it is owed again from chunk 0 (fanout.py): chunks whose items are stored end at once, the
  missing ones are generated. The unique key of a rationale keeps this idempotent.

One worker acts on a stalled job per window (a Redis `SET NX`); the others skip it. The stall time must
exceed the longest a chunk can go without storing an item (its teacher call deadline), or a slow but live
chunk gets a twin (no duplicate rows, only duplicate teacher calls).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache

import redis
from celery.signals import worker_ready
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import func, select

from distillery.queue import TASK_FINISH_JOB, TASK_START_JOB
from distillery.store import jobs
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery_worker import fanout
from distillery_worker.celery_app import DATABASE_URL, REDIS_URL, app

log = logging.getLogger(__name__)

CLAIM = "distillery:job:{job_id}:reconciled"

# (task name, job id) -> None: puts one message on the queue.
SendTask = Callable[[str, str], None]


class ReconcileSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_prefix="DISTILLERY_RECONCILE_", extra="ignore")

    interval_s: float = Field(default=30.0, gt=0, description="Seconds between looks at unfinished jobs.")
    stall_s: float = Field(
        default=300.0,
        gt=0,
        description="A queued or running job whose settled items have not moved for this long gets its "
        "messages sent again (keep it above the teacher call deadline).",
    )


@lru_cache
def get_reconcile_settings() -> ReconcileSettings:
    return ReconcileSettings()


class Reconciler:
    """Finds stalled jobs and sends their messages again; `check()` is one look (see the module doc)."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        send: SendTask,
        stall_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.send = send
        self.stall_s = stall_s
        self.clock = clock
        self._seen: dict[str, tuple[int, float]] = {}  # job id -> (settled items, since when)
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)

    def _unfinished(self) -> list[tuple[str, str, int]]:
        job, jt = m.RationaleJob, m.JobTeacher
        settled = func.coalesce(func.sum(jt.done + jt.failed), 0)
        with session_scope(self.database_url) as session:
            rows = session.execute(
                select(job.id, job.status, settled)
                .outerjoin(jt, jt.job_id == job.id)
                .where(job.status.in_([jobs.QUEUED, jobs.RUNNING]), job.kind == "generate")
                .group_by(job.id, job.status)
            )
            return [(str(i), str(s), int(n)) for i, s, n in rows]

    def check(self) -> list[str]:
        """One look at the unfinished jobs; the ids of the stalled ones this worker sent messages for."""
        now = self.clock()
        acted: list[str] = []
        current = self._unfinished()
        self._seen = {j: v for j, v in self._seen.items() if j in {i for i, _, _ in current}}
        for job_id, status, settled in current:
            last = self._seen.get(job_id)
            if last is None or last[0] != settled:
                self._seen[job_id] = (settled, now)
                continue
            if now - last[1] < self.stall_s:
                continue
            self._seen[job_id] = (settled, now)  # the next window starts now
            claim = CLAIM.format(job_id=job_id)
            if not self._redis.set(claim, 1, nx=True, ex=max(1, int(self.stall_s))):
                continue  # another worker has it
            if status == jobs.QUEUED:
                log.warning("job %s stranded in queued for %.0fs; starting it again", job_id, self.stall_s)
                self.send(TASK_START_JOB, job_id)
            else:
                log.warning(
                    "job %s made no progress for %.0fs (%d items settled); sending its missing chunks again",
                    job_id,
                    self.stall_s,
                    settled,
                )
                fanout.forget(self.redis_url, job_id)
                self.send(TASK_FINISH_JOB, job_id)
            acted.append(job_id)
        return acted


def _run_forever(reconciler: Reconciler, interval_s: float, stop: threading.Event) -> None:
    while not stop.wait(interval_s):
        try:
            reconciler.check()
        except Exception:  # the reconciler must never take the worker down (Redis or PostgreSQL away)
            log.exception("job reconciler: look at unfinished jobs failed; trying again next interval")


_stop = threading.Event()


@worker_ready.connect
def _start_reconciler(**_: object) -> None:
    settings = get_reconcile_settings()
    reconciler = Reconciler(
        DATABASE_URL,
        REDIS_URL,
        lambda name, job_id: app.send_task(name, args=[job_id]),
        settings.stall_s,
    )
    threading.Thread(
        target=_run_forever,
        args=(reconciler, settings.interval_s, _stop),
        name="job-reconciler",
        daemon=True,
    ).start()
