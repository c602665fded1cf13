"""The `train` task, and the sweep that re-queues runs whose trainer died.

A run is trained under its PostgreSQL advisory lock (distillery.store.runs.run_lock), so a second
delivery of the same run finds it locked and steps aside, and a run still `running` whose lock is free
has lost its trainer: the sweep (at start-up, then every `sweep_interval_s`) queues it again, and it
resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading

import redis
from celery import Celery
from celery.signals import worker_ready

from distillery.distill.runner import execute_run
from distillery.queue import QUEUE_TRAIN, TASK_TRAIN
from distillery.store import runs as run_store
from distillery.store.db import session_scope
from distillery_trainer.celery_app import DATABASE_URL, REDIS_URL, app, settings, trainer_settings

log = logging.getLogger(__name__)


@app.task(name=TASK_TRAIN)  # late acks, re-delivery on a lost worker: the app's config
def train(run_id: str) -> str:
    """Train, resume or skip run `run_id` (idempotent: a finished run is left as it is)."""
    nproc = trainer_settings.nproc_per_node
    if nproc <= 1:
        return execute_run(DATABASE_URL, run_id, settings)
    # Multi-GPU: the same runner under torchrun; its rank 0 takes the run's lock and writes the row.
    argv = ["torchrun", f"--nproc_per_node={nproc}", "-m", "distillery.distill.runner", run_id]
    code = subprocess.call(argv, env={**os.environ, "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL})
    with session_scope(DATABASE_URL) as session:
        return run_store.status_of(session, run_id) or f"exit {code}"


def sweep_orphans(database_url: str, celery: Celery, client: redis.Redis, ttl_s: int = 60) -> list[str]:
    """Re-queue runs left `running` by a dead trainer (-> their ids); end `cancelling` ones as cancelled."""
    requeued = []
    with session_scope(database_url) as session:
        for run_id in run_store.runs_with_status(session, ("running", "cancelling")):
            if run_store.is_locked(session, run_id):
                continue
            if run_store.status_of(session, run_id) == "cancelling":
                run_store.finish_run(session, run_id, "cancelled")
                continue
            # One re-queue per run and window: duplicates would be harmless (the lock), only noisy.
            if client.set(f"distillery:train:requeued:{run_id}", 1, nx=True, ex=ttl_s):
                requeued.append(run_id)
    for run_id in requeued:
        log.warning("run %s lost its trainer; queued again to resume from its last checkpoint", run_id)
        celery.send_task(TASK_TRAIN, args=[run_id], queue=QUEUE_TRAIN)
    return requeued


def _sweep_forever(stop: threading.Event) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    interval = trainer_settings.sweep_interval_s
    while True:
        try:
            sweep_orphans(DATABASE_URL, app, client, ttl_s=max(1, int(interval)))
        except Exception:  # the sweep must never take the trainer down
            log.exception("orphan sweep failed")
        if stop.wait(interval):
            return


_stop = threading.Event()


@worker_ready.connect
def _start_sweeper(**_: object) -> None:
    threading.Thread(target=_sweep_forever, args=(_stop,), name="orphan-sweep", daemon=True).start()
