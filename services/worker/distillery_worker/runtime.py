"""One event loop per worker process, and what lives on it from chunk to chunk.

Chunk tasks run on Celery's pool threads; their coroutines all run on this loop, so a teacher keeps one
HTTP client (and its pooled connections) per process, Redis keeps one connection pool, and a job's
status is asked of PostgreSQL about once a second per process instead of once per teacher call. A cancel
reaches the process at once through PostgreSQL's LISTEN/NOTIFY (jobs.CANCEL_CHANNEL); the periodic
status read is the backstop should a notification be missed (listener reconnecting).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg
import redis.asyncio as aioredis
from psycopg import sql
from sqlalchemy.engine import make_url

from distillery.store import jobs
from distillery.store.db import normalise_url, session_scope
from distillery.teachers.registry import ClientPool

T = TypeVar("T")
log = logging.getLogger(__name__)

# How stale a job's status may be when no cancel notification came (the backstop).
STATUS_MAX_AGE_S = 1.0


class JobWatch:
    """Whether jobs are over (cancelled, ended), asked at most every `max_age_s` per job."""

    def __init__(self, database_url: str, max_age_s: float = STATUS_MAX_AGE_S):
        self.database_url, self.max_age_s = database_url, max_age_s
        self._seen: dict[str, tuple[float, bool]] = {}
        self._asking: dict[str, asyncio.Future[bool]] = {}

    def _query(self, job_id: str) -> bool:
        with session_scope(self.database_url) as session:
            return jobs.job_status(session, job_id) in jobs.TERMINAL

    def _ask(self, job_id: str) -> asyncio.Future[bool]:
        """One query in flight per job, however many calls wait for it."""
        asking = self._asking.get(job_id)
        if asking is None:
            started = time.monotonic()
            asking = asyncio.ensure_future(asyncio.to_thread(self._query, job_id))

            def done(future: asyncio.Future[bool]) -> None:
                self._asking.pop(job_id, None)
                if not future.cancelled() and future.exception() is None:
                    self._remember(job_id, started, future.result())

            asking.add_done_callback(done)
            self._asking[job_id] = asking
        return asking

    def cancelled(self, job_id: str) -> None:
        """A cancel notification: the job is over from now on (call on the loop)."""
        self._remember(job_id, time.monotonic(), True)

    def _remember(self, job_id: str, at: float, over: bool) -> None:
        if len(self._seen) > 1000:  # forget jobs not asked about for a minute
            self._seen = {k: v for k, v in self._seen.items() if at - v[0] < 60}
        self._seen[job_id] = (at, over)

    async def is_over(self, job_id: str) -> bool:
        seen = self._seen.get(job_id)
        if seen is not None and (seen[1] or time.monotonic() - seen[0] < self.max_age_s):
            return seen[1]
        return await asyncio.shield(self._ask(job_id))

    def was_over(self, job_id: str) -> bool:
        """The last known answer, without waiting (a stale one starts a new query for next time)."""
        seen = self._seen.get(job_id)
        if seen is None or (not seen[1] and time.monotonic() - seen[0] >= self.max_age_s):
            self._ask(job_id)
        return seen is not None and seen[1]


class Runtime:
    """The process's chunk loop (a daemon thread) with its teacher clients, Redis client and job watch."""

    def __init__(self, database_url: str, redis_url: str):
        self.loop = asyncio.new_event_loop()
        self.clients = ClientPool()
        # Connects on first use, on the loop. Slot waiters hold a connection each (BLPOP): at most a
        # teacher's max_concurrency per teacher, thanks to `gate`.
        self.redis = aioredis.Redis.from_url(redis_url, max_connections=4096)
        self._gates: dict[tuple[int, int], asyncio.Semaphore] = {}
        self.jobs = JobWatch(database_url)
        self._thread = threading.Thread(target=self.loop.run_forever, name="chunk-loop", daemon=True)
        self._thread.start()
        self._listener = threading.Thread(
            target=self._listen, args=(database_url,), name="cancel-listener", daemon=True
        )
        self._listener.start()

    def _listen(self, database_url: str) -> None:
        """Forward cancel notifications to the job watch, reconnecting for as long as the process lives."""
        url = make_url(normalise_url(database_url)).set(drivername="postgresql")
        while True:
            try:
                with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(jobs.CANCEL_CHANNEL)))
                    for note in conn.notifies():
                        self.loop.call_soon_threadsafe(self.jobs.cancelled, note.payload)
            except Exception as exc:  # the status read every STATUS_MAX_AGE_S covers the gap
                log.warning("cancel listener: %s; reconnecting", type(exc).__name__)
                time.sleep(2.0)

    def gate(self, teacher_id: int, limit: int) -> asyncio.Semaphore:
        """The process's cap on a teacher's calls: only this many of its items compete for its Redis
        slots at once, over all chunks; the rest wait here at no cost (call on the loop)."""
        key = (teacher_id, limit)
        if key not in self._gates:
            self._gates[key] = asyncio.Semaphore(limit)
        return self._gates[key]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result (from any thread but the loop's)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


_runtime: tuple[int, Runtime] | None = None
_lock = threading.Lock()


def get_runtime(database_url: str, redis_url: str) -> Runtime:
    """This process's runtime (a forked child builds its own: loops and sockets do not survive a fork)."""
    global _runtime
    with _lock:
        if _runtime is None or _runtime[0] != os.getpid():
            _runtime = (os.getpid(), Runtime(database_url, redis_url))
        return _runtime[1]
