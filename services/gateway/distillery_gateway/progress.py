"""Server-sent progress of queued work (rationale jobs, training runs).

The workers' only report channel is the database row, so the stream polls it: a `progress` event
whenever the snapshot changes, `end` once the work is over. Each API key may hold at most
DISTILLERY_MAX_STREAMS_PER_KEY open streams on a replica (429 beyond), so streams cannot exhaust its
threads and connections.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from distillery.store.db import session_factory
from distillery_gateway.errors import APIError


class Snapshot(NamedTuple):
    """What one poll saw: the event id, the event data (JSON) and whether the work is over."""

    event_id: str
    data: str
    over: bool


async def progress_events(
    request: Request, load: Callable[[], Snapshot], poll_s: float
) -> AsyncIterator[dict[str, str]]:
    """Poll `load` and emit what changed, until the work is over or the client has gone."""
    last = None
    while True:
        snapshot = await run_in_threadpool(load)
        if snapshot.data != last:
            yield {"event": "progress", "id": snapshot.event_id, "data": snapshot.data}
            last = snapshot.data
        if snapshot.over:
            yield {"event": "end", "data": snapshot.data}
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)


async def counted(
    streams: Counter[str], key_id: str, events: AsyncIterator[dict[str, str]]
) -> AsyncIterator[dict[str, str]]:
    """`events`, holding one of `key_id`'s stream slots until they end (or the client leaves).

    The slot is taken when the body starts, so a stream that never starts holds none."""
    streams[key_id] += 1
    try:
        async for event in events:
            yield event
    finally:
        streams[key_id] -= 1
        if streams[key_id] <= 0:
            del streams[key_id]


def progress_stream(
    request: Request, snapshot: Callable[[Session], Snapshot], poll_s: float
) -> EventSourceResponse:
    """The stream of `snapshot`, each poll read through a session of its own (the stream outlives the
    request's session). 429 when the caller's key already holds its share of open streams."""
    factory = session_factory(request.app.state.database_url)
    streams: Counter[str] = request.app.state.__dict__.setdefault("open_streams", Counter())
    key_id = request.state.principal.key_id
    limit = request.app.state.settings.max_streams_per_key
    if streams[key_id] >= limit:
        raise APIError(
            429,
            f"this API key already has {limit} open event streams (DISTILLERY_MAX_STREAMS_PER_KEY); "
            "close one first",
            code="too_many_streams",
            headers={"Retry-After": "5"},
        )

    def load() -> Snapshot:
        with factory() as session:
            return snapshot(session)

    return EventSourceResponse(counted(streams, key_id, progress_events(request, load, poll_s)), ping=15)
