"""Dynamic micro-batching: requests that arrive within a few milliseconds share one batched call.

Jobs wait in a bounded FIFO; a single loop takes the oldest job, waits for companions while they keep
arriving (gaps under `wait_s`, at most a few windows, or until `max_rows` rows are waiting), takes every
waiting job with the same batch key that still fits,
and runs them as one call on a one-thread executor, so the model runs one batch at a time and the event
loop stays free. Requests that arrive while a batch runs form the next one. A full queue raises
`QueueFull` at once (back-pressure) instead of growing without bound, and a job still waiting after
`max_wait_s` fails with `QueueTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from distillery_gateway.engine.types import ModelNotReady, QueueFull, QueueTimeout

log = logging.getLogger(__name__)

MAX_WAIT_FACTOR = 5  # a batch waits for companions at most this many windows


@dataclass(eq=False)
class Job:
    """One request's share of a batch: `rows` sequences under batch key `key`."""

    key: Hashable
    rows: int = 1
    payload: Any = None
    cancelled: bool = False
    future: asyncio.Future | None = field(default=None, repr=False)
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    deadline: asyncio.TimerHandle | None = field(default=None, repr=False)  # fails it while it waits

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Complete the job from any thread."""
        assert self.loop is not None and self.future is not None
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


RunBatch = Callable[[Sequence[Job]], None]
BatchObserver = Callable[[int], None]


class MicroBatcher:
    """Collects jobs into batches and runs `run_batch(jobs)` on a dedicated thread, one batch at a time.

    `run_batch` must call `job.resolve(...)` for every job it is given; an exception it raises fails
    every job of the batch that it left unresolved.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_rows: int,
        wait_s: float,
        max_queue: int,
        name: str = "batch",
        on_batch: BatchObserver | None = None,
        thread_init: Callable[[], None] | None = None,
        max_wait_s: float | None = None,
    ):
        self._run_batch, self._on_batch = run_batch, on_batch
        self.max_rows, self.max_queue = max_rows, max_queue
        self.wait_s, self.max_wait_s = wait_s, max_wait_s
        self._pending: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=thread_init)
        self._task: asyncio.Task | None = None
        self._closed = False
        self.running_rows = 0
        self._last_rows = 0

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch (not counting the one running)."""
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    def enqueue(self, job: Job) -> asyncio.Future:
        """Queue `job` (QueueFull when the queue is full); the future completes with its result."""
        if self._closed:
            raise ModelNotReady("the model is being replaced; retry")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"the request queue is full ({self.max_queue} waiting)")
        self.start()
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        if self.max_wait_s is not None:
            job.deadline = job.loop.call_later(self.max_wait_s, self._expire, job)
        self._pending.append(job)
        self._arrived.set()
        return job.future

    def cancel(self, job: Job) -> None:
        """The caller went away: drop the job, or stop generating for it in the running batch."""
        job.cancelled = True
        if job.deadline is not None:
            job.deadline.cancel()
        with contextlib.suppress(ValueError):
            self._pending.remove(job)

    def _expire(self, job: Job) -> None:
        """The job's queue deadline: fail it if it is still waiting (a running one runs to its end)."""
        try:
            self._pending.remove(job)
        except ValueError:
            return
        if job.future is not None and not job.future.done():
            job.future.set_exception(QueueTimeout(f"waited {self.max_wait_s:g} s in the queue"))

    async def submit(self, job: Job) -> Any:
        """Queue `job` and wait for its result."""
        future = self.enqueue(job)
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(job)
            raise

    async def close(self) -> None:
        """Stop taking jobs, fail the waiting ones, let the running batch finish, free the thread."""
        self._closed = True
        while self._pending:
            job = self._pending.popleft()
            if job.future is not None and not job.future.done():
                job.future.set_exception(ModelNotReady("the model is being replaced; retry"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    async def _gather_window(self) -> None:
        """Wait for companions: until a quiet gap of `wait_s`, a full batch, or `MAX_WAIT_FACTOR * wait_s`.

        While fewer rows wait than the last batch carried, quiet gaps do not end the wait: under steady
        load the clients of the batch that just finished come back within milliseconds, and waiting for
        them keeps batches full instead of splitting them into a big and a small one for good.
        """
        if self.wait_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s * MAX_WAIT_FACTOR
        while (rows := sum(j.rows for j in self._pending)) < self.max_rows:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            expecting = rows < self._last_rows
            self._arrived.clear()
            try:
                await asyncio.wait_for(
                    self._arrived.wait(), remaining if expecting else min(self.wait_s, remaining)
                )
            except TimeoutError:
                if not expecting:
                    return  # a quiet gap: the burst is over

    def _take(self) -> list[Job]:
        """The oldest job plus every waiting job with its key that still fits, in arrival order."""
        while self._pending and self._pending[0].cancelled:
            self._pending.popleft()
        if not self._pending:
            return []
        first = self._pending.popleft()
        batch, rows, keep = [first], first.rows, deque[Job]()
        while self._pending:
            job = self._pending.popleft()
            if job.cancelled:
                continue
            if job.key == first.key and rows + job.rows <= self.max_rows:
                batch.append(job)
                rows += job.rows
            else:
                keep.append(job)
        self._pending = keep
        for job in batch:
            if job.deadline is not None:
                job.deadline.cancel()
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._gather_window()
            batch = self._take()
            if not batch:
                continue
            self.running_rows = self._last_rows = sum(j.rows for j in batch)
            if self._on_batch is not None:
                self._on_batch(self.running_rows)
            try:
                await loop.run_in_executor(self._executor, self._run_safely, batch)
            finally:
                self.running_rows = 0

    def _run_safely(self, batch: Sequence[Job]) -> None:
        try:
            self._run_batch(batch)
        except Exception as exc:  # one bad batch must not take the loop down
            log.exception("batch of %d jobs failed", len(batch))
            for job in batch:
                job.resolve(error=exc)
