"""A streamed request as the serving layer iterates it: text deltas, then the finished Generation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from distillery_gateway.engine.types import Delta, Generation

END = object()  # put on the queue once `result` is set


class QueuedStream:
    """Deltas from `queue` until END, then `result`'s Generation; closing it early calls `cancel`."""

    def __init__(self, queue: asyncio.Queue, result: asyncio.Future, cancel: Callable[[], None]):
        self.queue, self.result, self.cancel = queue, result, cancel
        self.finished = False

    def __aiter__(self) -> QueuedStream:
        return self

    async def __anext__(self) -> Delta | Generation:
        if self.finished:
            raise StopAsyncIteration
        item = await self.queue.get()
        if item is END:
            self.finished = True
            return self.result.result()
        return item

    async def aclose(self) -> None:
        if not self.result.done():
            self.cancel()
