"""Streamed fan-out and batched writes: a job larger than the chunk window, on the real stack.

The teacher stands outside the system: a tiny OpenAI-compatible server on loopback that answers every
call with the same text (so later samples are duplicates) after a short pause. The worker is a real
`python -m distillery_worker` process; the queue is read straight from Redis while the job runs.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from jobs_support import ServerThread, Stack, count_rows, import_arc, rationale_keys
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from distillery.config import Settings
from distillery.queue import QUEUE_RATIONALES, TASK_RUN_CHUNK
from distillery.store import models as m
from distillery.store.db import session_scope

N, SAMPLES, CHUNK, WINDOW, CONCURRENCY = 40, 2, 2, 3, 2


class SameAnswer:
    """An OpenAI-compatible chat endpoint that counts its calls and always says the same thing."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        app = Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])])
        self.server = ServerThread(app)

    async def _complete(self, request: Request) -> JSONResponse:
        await request.body()
        with self.lock:
            self.calls += 1
        await asyncio.sleep(0.02)
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "same",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Same words."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
            }
        )


def queued_chunks(client: redis.Redis) -> tuple[int, int]:
    """(run_chunk messages waiting in the queue, run_chunk messages taken by a worker but not acked)."""

    def is_chunk(message: dict) -> bool:
        return message.get("headers", {}).get("task") == TASK_RUN_CHUNK

    waiting = 0
    for key in client.scan_iter(match=f"{QUEUE_RATIONALES}*"):
        if client.type(key) == b"list":
            waiting += sum(is_chunk(json.loads(raw)) for raw in client.lrange(key, 0, -1))
    taken = sum(is_chunk(json.loads(raw)[0]) for raw in client.hvals("unacked"))
    return waiting, taken


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    import_arc(settings.database_url, N)
    with Stack(settings, tmp_path) as s:
        yield s


def test_job_larger_than_the_window_keeps_the_queue_bounded_and_stores_every_item_once(stack: Stack) -> None:
    teacher = SameAnswer()
    client = redis.Redis.from_url(stack.settings.redis_url)
    peaks = {"waiting": 0, "taken": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            waiting, taken = queued_chunks(client)
            peaks["waiting"] = max(peaks["waiting"], waiting)
            peaks["taken"] = max(peaks["taken"], taken)
            stop.wait(0.02)

    with teacher.server:
        stack.register("same", teacher.server.url + "/v1", "same", "chat", max_concurrency=4)
        job = stack.submit(
            dataset="arc",
            limit=N,
            teachers=["same"],
            samples_per_example=SAMPLES,
            in_context={"strategy": "random", "k": 1},
        )
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        stack.worker(
            concurrency=CONCURRENCY, chunk_size=CHUNK, chunks_in_flight=WINDOW, flush_items=3, flush_ms=50
        )
        view = stack.wait(job["id"], timeout=300)
        stop.set()
        watcher.join()
    assert view["status"] == "completed", view
    # N / CHUNK = 20 chunks, never more than the window waiting, nor more than window + running taken.
    assert 0 < peaks["waiting"] <= WINDOW, peaks
    assert peaks["taken"] <= WINDOW + CONCURRENCY, peaks
    keys = rationale_keys(stack.settings.database_url, job["id"])
    assert len(keys) == len(set(keys)) == N * SAMPLES
    assert teacher.calls == N * SAMPLES
    assert count_rows(stack.settings.database_url, m.RationaleFailure) == 0
    assert view["progress"][0]["done"] == N * SAMPLES
    assert view["usage"]["completion_tokens"] == 3 * N * SAMPLES
    # Sample 1 repeats sample 0 (same text): flagged when stored after it, in the same batch or a later one.
    r = m.Rationale
    with session_scope(stack.settings.database_url) as session:
        rows = session.execute(
            select(r.example_id, r.sample_index, r.id, r.duplicate).where(r.job_id == job["id"])
        ).all()
    by_example: dict[int, dict[int, tuple[int, bool]]] = {}
    for example_id, sample, row_id, duplicate in rows:
        by_example.setdefault(example_id, {})[sample] = (row_id, duplicate)
    assert all(not pair[0][1] and pair[1][1] == (pair[1][0] > pair[0][0]) for pair in by_example.values())
    assert any(pair[1][1] for pair in by_example.values())
    # The cursor of a finished job is gone: nothing of it stays in Redis.
    assert not list(client.scan_iter(match=f"distillery:job:{job['id']}:*"))
    client.close()
