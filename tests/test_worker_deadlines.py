"""Deadlines of the rationale pipeline against a teacher that never finishes: a real local HTTP server
that answers 200 and then drips one byte a second forever (httpx's per-read timeout never fires).

Real worker processes; each test checks that the chunk ends at its deadline and the job settles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from jobs_support import ServerThread, Stack, count_rows, import_arc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from distillery.config import Settings
from distillery.store import models as m

ONE_TRY = {"item_attempts": 1, "max_retries": 0}


async def _drip(request: Request) -> StreamingResponse:
    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await asyncio.sleep(1.0)

    return StreamingResponse(forever(), media_type="application/json")


@pytest.fixture
def dripping_teacher() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/{path:path}", _drip, methods=["GET", "POST"])])
    with ServerThread(app) as server:
        yield server.url + "/v1"


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    import_arc(settings.database_url, 2)
    with Stack(settings, tmp_path) as s:
        yield s


def run_job(stack: Stack) -> tuple[dict, float]:
    job = stack.submit(
        dataset="arc", limit=1, teachers=["drip"], in_context={"k": 0}, generation={"max_tokens": 8}
    )
    started = time.monotonic()
    view = stack.wait(job["id"], timeout=120)
    return view, time.monotonic() - started


def test_a_dripping_teacher_call_ends_at_the_call_deadline(stack: Stack, dripping_teacher: str) -> None:
    stack.register("drip", dripping_teacher, "drip", "chat", timeout_s=3, max_concurrency=1)
    worker = stack.worker(concurrency=1, **ONE_TRY)
    view, took = run_job(stack)
    assert view["status"] == "completed_with_errors", view
    assert count_rows(stack.settings.database_url, m.RationaleFailure) == 1
    assert took < 60, took  # not the hour httpx's per-read timeouts would allow
    print(f"\ndrill: dripping teacher, call deadline 3 s -> job settled in {took:.1f}s")
    assert "timed out" in worker.log_text() or view["progress"][0]["failed"] == 1


def test_a_chunk_ends_at_its_deadline(stack: Stack, dripping_teacher: str) -> None:
    # The teacher's own deadline is far away: the chunk's cuts it.
    stack.register("drip", dripping_teacher, "drip", "chat", timeout_s=600, max_concurrency=1)
    stack.worker(concurrency=1, chunk_deadline_s=4, **ONE_TRY)
    view, took = run_job(stack)
    assert view["status"] == "completed_with_errors", view
    assert [(t["done"], t["failed"]) for t in view["progress"]] == [(0, 1)]
    assert took < 60, took
    print(f"\ndrill: dripping teacher, chunk deadline 4 s -> job settled in {took:.1f}s")
