"""Server-sent progress of one training run: `progress` whenever step/status change, `end` when over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from distillery.store.runs import FINISHED
from distillery_gateway.training import protocol as p

POLL_S = 1.0


def _summary(view: p.TrainingRun) -> str:
    last = view.loss_curve[-1].model_dump() if view.loss_curve else None
    body = {
        "id": view.id,
        "status": view.status,
        "step": view.step,
        "total_steps": view.total_steps,
        "progress": view.progress,
        "last_loss": last,
        "metrics": view.metrics if view.status in FINISHED else None,
        "error": view.error,
    }
    return p.TrainingRunEvent(**body).model_dump_json()


async def progress_events(
    request: Request, load: Callable[[], p.TrainingRun], poll_s: float = POLL_S
) -> AsyncIterator[dict]:
    """Poll the run row (the trainer's only report channel) and emit what changed."""
    last = None
    while True:
        view = await run_in_threadpool(load)
        payload = _summary(view)
        if payload != last:
            yield {"event": "progress", "id": str(view.step), "data": payload}
            last = payload
        if view.status in FINISHED:
            yield {"event": "end", "data": payload}
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)
