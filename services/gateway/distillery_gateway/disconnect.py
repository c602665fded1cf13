"""Work for a request that stops when its client goes away (as vLLM's `with_cancellation` does).

A non-streamed answer is computed before anything is sent, so nothing else notices a client that
left: the work is raced against the ASGI `http.disconnect` message, and cancelled when that comes
first. Cancelling it cancels its engine job: dropped from the queue, or its sequences stopped at the
next generated token. (A streamed answer stops through its event stream being closed.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response

from distillery_gateway.metrics import GatewayMetrics

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's "client closed request": what the request metrics record; nobody reads it


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def count_cancelled(request: Request) -> None:
    """One more request whose client left before its answer (by route)."""
    metrics: GatewayMetrics = request.app.state.metrics
    route = getattr(request.scope.get("route"), "path", None) or request.url.path
    metrics.cancelled.labels(route).inc()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """`work`'s result; or, when the client disconnects first, `work` cancelled and a 499 response."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    count_cancelled(request)
    return Response(status_code=CLIENT_CLOSED)
