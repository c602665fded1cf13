"""Streamed fan-out: a job's chunks reach the queue in waves, so a job of any size has a bounded footprint.

The plan is fixed: chunk i of a teacher holds the job's example ids [i * size, (i + 1) * size). A Redis
hash per job keeps how many chunks of each teacher were sent, and the size they were cut with. After every
chunk the job is topped up under its row lock: a teacher gets chunks up to
`settled items // items per chunk + window`, so at most `window` of its chunks wait in the queue (running
ones make progress, and progress moves the window). Chunks are sent before the cursor moves, so a crash
in between sends a chunk twice (harmless: a chunk only fills what is missing), never zero times; a lost
hash starts again from chunk 0, whose chunks find their items stored and end at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import cast

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from distillery.store import jobs
from distillery.store import models as m

CURSOR = "distillery:job:{job_id}:chunks-sent"
_SIZE = b"size"
CURSOR_TTL_S = 7 * 24 * 3600

# (teacher id, example ids) -> None: puts one chunk on the queue.
Send = Callable[[int, list[int]], None]


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def top_up(session: Session, redis_url: str, send: Send, job_id: str, chunk_size: int, window: int) -> int:
    """Send the chunks each teacher of a running job is owed; how many were sent.

    The caller holds the job's row lock (jobs.claim_for_start, jobs.reconcile) for the transaction.
    """
    client = _redis(redis_url)
    key = CURSOR.format(job_id=job_id)
    state = cast(dict[bytes, bytes], client.hgetall(key))
    size = int(state.get(_SIZE, chunk_size))
    examples = jobs.item_count(session, job_id)
    if not examples:
        return 0
    chunks = math.ceil(examples / size)
    jt = m.JobTeacher
    owed: dict[int, tuple[int, int]] = {}
    for teacher_id, total, settled in session.execute(
        select(jt.teacher_id, jt.total, jt.done + jt.failed)
        .where(jt.job_id == job_id)
        .order_by(jt.teacher_id)
    ):
        per_chunk = size * max(1, total // examples)  # items of a chunk: examples x samples
        sent = int(state.get(str(teacher_id).encode(), 0))
        target = min(chunks, settled // per_chunk + window)
        if target > sent:
            owed[teacher_id] = (sent, target)
    if not owed:
        return 0
    first = min(sent for sent, _ in owed.values())
    last = max(target for _, target in owed.values())
    ids = jobs.example_slice(session, job_id, first * size, last * size)
    # Round-robin over teachers, so that one slow teacher's chunks do not queue in front of the others'.
    count = 0
    for index in range(first, last):
        for teacher_id, (sent, target) in owed.items():
            if sent <= index < target:
                offset = (index - first) * size
                send(teacher_id, ids[offset : offset + size])
                count += 1
    client.hset(key, mapping={_SIZE: size, **{str(t): target for t, (_, target) in owed.items()}})
    client.expire(key, CURSOR_TTL_S)
    return count


def forget(redis_url: str, job_id: str) -> None:
    """Drop a finished job's cursor."""
    _redis(redis_url).delete(CURSOR.format(job_id=job_id))
