"""Server-sent progress of one job: a `progress` event whenever its view changes, `end` when it is over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from distillery.store import jobs
from distillery_gateway.jobs import protocol as p

POLL_S = 0.5


async def progress_events(
    request: Request, load: Callable[[], p.RationaleJob], poll_s: float = POLL_S
) -> AsyncIterator[dict]:
    """Poll the job row (the workers' only report channel) and emit what changed."""
    last = None
    while True:
        view = await run_in_threadpool(load)
        payload = view.model_dump_json()
        over = view.status in jobs.TERMINAL
        if payload != last:
            yield {"event": "progress", "id": str(view.done + view.failed), "data": payload}
            last = payload
        if over:
            yield {"event": "end", "data": payload}
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)
