"""One chunk of a job: one teacher, a few examples, every missing sample generated and stored.

A chunk only fills what is missing (stored rationales and final failures are skipped), so a re-delivered
or retried chunk never calls the teacher for an item it already has. Calls run concurrently under the
teacher's cross-worker slot limit, on the process's shared loop and teacher client (runtime.py). Results
are stored in batches (every `flush_items` results or `flush_ms`, whichever comes first), each batch with
its progress counters in one transaction, so a crash loses at most the calls in flight and one batch,
which a re-delivery of the chunk makes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from distillery.rationales.checks import agrees_with_gold, clean_rationale, is_duplicate, is_truncated
from distillery.rationales.prompts import TEMPLATE_VERSION, demonstration_provenance
from distillery.records import Demonstration, Example
from distillery.store import jobs
from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.store.db import session_scope
from distillery.store.examples import to_record
from distillery.teachers import registry
from distillery.teachers.base import Generation, GenerationParams, TeacherClient, TeacherError, TeacherSpec
from distillery_worker.demos import demonstrations_for
from distillery_worker.runtime import Runtime
from distillery_worker.settings import WorkerSettings
from distillery_worker.slots import TeacherSlots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    example_row_id: int
    example: Example
    sample_index: int
    demonstrations: list[Demonstration]


@dataclass
class Outcome:
    """What a run of a chunk did; `retry` holds items that failed retryably and may be tried again."""

    stored: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: bool = False
    deferred: bool = False
    retry: list[tuple[Item, str]] = field(default_factory=list)


class _Cancelled(Exception):
    pass


class BatchWriter:
    """Buffers results and hands them to `write` (run in a thread) every `every` items or `max_wait_s`."""

    def __init__(self, write: Callable[[list], int], every: int, max_wait_s: float):
        self._write, self.every, self.max_wait_s = write, every, max_wait_s
        self._buffer: list = []
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False
        self.written = 0

    def add(self, entry: object) -> None:
        self._buffer.append(entry)
        if len(self._buffer) >= self.every:
            self._full.set()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._buffer = self._buffer, []
            self._full.clear()
            if batch:
                self.written += await asyncio.to_thread(self._write, batch)

    async def keep_flushing(self) -> None:
        """Flush until `close()`; a failed write ends it with the error (the chunk then fails)."""
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.max_wait_s)
            await self.flush()

    def close(self) -> None:
        self._closed = True
        self._full.set()


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TeacherError) and exc.retryable


def job_params(spec: TeacherSpec, overrides: dict) -> GenerationParams:
    """The teacher's own generation parameters with the job's overrides on top."""
    return GenerationParams(**{**spec.params.model_dump(), **overrides})


def sample_params(params: GenerationParams, sample_index: int) -> GenerationParams:
    # Several samples with one fixed seed would be the same text; offset the seed per sample.
    if params.seed is None or sample_index == 0:
        return params
    return params.model_copy(update={"seed": params.seed + sample_index})


class ChunkRun:
    """Generates and stores the missing rationales of (job, teacher, examples)."""

    def __init__(
        self,
        runtime: Runtime,
        database_url: str,
        settings: WorkerSettings,
        job_id: str,
        teacher_id: int,
        example_ids: list[int],
        attempt: int = 0,
        final: bool = False,
    ):
        self.runtime, self.database_url, self.settings = runtime, database_url, settings
        self.job_id, self.teacher_id, self.example_ids = job_id, teacher_id, example_ids
        self.attempt, self.final = attempt, final

    # ---------------------------------------------------------------- database side (synchronous)

    def _plan(self) -> tuple[TeacherSpec, list[Item], dict] | None:
        """The teacher, the items still missing and the generation overrides; None if the job is over."""
        with session_scope(self.database_url) as session:
            job = jobs.chunk_job(session, self.job_id)
            if job is None or job.status in jobs.TERMINAL:
                return None
            teacher = session.get(m.Teacher, self.teacher_id)
            if teacher is None:
                raise LookupError(f"teacher id {self.teacher_id} of job {self.job_id} no longer exists")
            spec = registry.spec_from_row(teacher)
            settled = jobs.settled_items(session, self.job_id, self.teacher_id, self.example_ids)
            samples = int(job.params.get("samples_per_example", 1))
            rows = {
                row.id: row
                for row in session.scalars(select(m.Example).where(m.Example.id.in_(self.example_ids)))
            }
            wanted = [
                (row_id, s)
                for row_id in self.example_ids
                if row_id in rows
                for s in range(samples)
                if (row_id, s) not in settled
            ]
            if not wanted:
                return spec, [], {}
            records = {row_id: to_record(rows[row_id]) for row_id, _ in wanted}
            demos = demonstrations_for(session, job, list({r.id: r for r in records.values()}.values()))
            items = [Item(row_id, records[row_id], s, demos[records[row_id].id]) for row_id, s in wanted]
            return spec, items, dict(job.params.get("generation", {}))

    def _row(self, spec: TeacherSpec, item: Item, gen: Generation) -> dict:
        text = clean_rationale(gen.text)
        # A text cut before an invented follow-up question ended where the rationale ended, whatever
        # the finish reason says about the part that was cut off.
        cut = text != gen.text.strip()
        shown = demonstration_provenance(item.demonstrations)
        return {
            "job_id": self.job_id,
            "example_id": item.example_row_id,
            "teacher_id": self.teacher_id,
            "sample_index": item.sample_index,
            "text": text,
            "finish_reason": gen.finish_reason,
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens,
            "latency_ms": gen.latency_ms,
            "template_version": gen.extra.get("template_version")
            or spec.template_version
            or TEMPLATE_VERSION,
            # Exactly what the prompt showed: every demonstration, and whether each had a rationale.
            "incontext_ids": shown[0],
            "incontext_rationales": shown[1],
            "truncated": is_truncated(text, None if cut else gen.finish_reason),
            "agrees_with_gold": agrees_with_gold(text, item.example),
            "duplicate": False,
        }

    def _mark_duplicates(self, session: Session, rows: list[dict]) -> None:
        """A later sample repeating another sample of its example (stored, or earlier in the batch)."""
        later = {row["example_id"] for row in rows if row["sample_index"]}
        if not later:
            return
        r = m.Rationale
        texts: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for example_id, sample_index, text in session.execute(
            select(r.example_id, r.sample_index, r.text).where(
                r.job_id == self.job_id, r.teacher_id == self.teacher_id, r.example_id.in_(sorted(later))
            )
        ):
            texts[example_id].append((sample_index, text))
        for row in rows:
            seen = texts[row["example_id"]]
            if row["sample_index"]:
                others = [text for index, text in seen if index != row["sample_index"]]
                row["duplicate"] = is_duplicate(row["text"], others)
            seen.append((row["sample_index"], row["text"]))

    def _store(self, spec: TeacherSpec, batch: list[tuple[Item, Generation]]) -> int:
        """Store a batch and count what was new, in one transaction; how many rows were new."""
        rows = [self._row(spec, item, gen) for item, gen in batch]
        with session_scope(self.database_url) as session:
            self._mark_duplicates(session, rows)
            new = set(rat_store.insert_new_rationales(session, rows))
            if new:
                counted = [row for row in rows if tuple(row[k] for k in rat_store.CONFLICT_KEY) in new]
                jobs.add_progress(
                    session,
                    self.job_id,
                    self.teacher_id,
                    done=len(new),
                    prompt_tokens=sum(row["prompt_tokens"] or 0 for row in counted),
                    completion_tokens=sum(row["completion_tokens"] or 0 for row in counted),
                )
        return len(new)

    def _fail(self, failures: list[tuple[Item, str, int]]) -> None:
        with session_scope(self.database_url) as session:
            for item, error, attempts in failures:
                jobs.fail_item(
                    session,
                    self.job_id,
                    self.teacher_id,
                    item.example_row_id,
                    item.sample_index,
                    error,
                    attempts,
                )

    # ---------------------------------------------------------------- teacher side (async)

    async def run(self) -> Outcome:
        plan = await asyncio.to_thread(self._plan)
        if plan is None:
            return Outcome(cancelled=True)
        spec, items, overrides = plan
        outcome = Outcome(skipped=len(self.example_ids) - len(items))
        if not items:
            return outcome
        async with contextlib.AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(self.runtime.clients.client(spec))
            except ValueError as exc:  # a teacher configured wrongly fails every item, for good
                await asyncio.to_thread(self._fail, [(item, str(exc), 1) for item in items])
                outcome.failed = len(items)
                return outcome
            results = await self._generate(client, spec, items, job_params(spec, overrides), outcome)
        if results is None:
            return Outcome(deferred=True)
        failures = []
        for item, result in zip(items, results, strict=True):
            if result == "cancelled":
                outcome.cancelled = True
            elif isinstance(result, TeacherError):
                attempts = (self.attempt + 1) * self.settings.item_attempts
                if result.retryable and not self.final:
                    outcome.retry.append((item, str(result)))
                else:
                    failures.append((item, str(result), attempts))
        if failures:
            await asyncio.to_thread(self._fail, failures)
            outcome.failed += len(failures)
        return outcome

    async def _generate(
        self,
        client: TeacherClient,
        spec: TeacherSpec,
        items: list[Item],
        params: GenerationParams,
        outcome: Outcome,
    ) -> list[str | TeacherError] | None:
        """Every item's call, results stored in batches; None if the chunk was deferred."""
        slots = TeacherSlots(
            self.runtime.redis, self.teacher_id, spec.max_concurrency, self.settings.slot_lease_s
        )
        local = self.runtime.gate(self.teacher_id, spec.max_concurrency)
        writer = BatchWriter(
            lambda batch: self._store(spec, batch), self.settings.flush_items, self.settings.flush_ms / 1000
        )
        async with slots:
            # A teacher kept busy by other chunks (a slow one) would hold this worker slot idle while
            # other teachers' chunks wait in the queue behind it: hand the chunk back instead.
            if not await slots.wait_for_room(self.settings.defer_after_s):
                return None
            flusher = asyncio.create_task(writer.keep_flushing())
            try:
                results = await asyncio.gather(
                    *(
                        self._one(
                            client, slots, local, writer, item, sample_params(params, item.sample_index)
                        )
                        for item in items
                    )
                )
            finally:
                writer.close()
                await flusher
        await writer.flush()
        outcome.stored = writer.written
        return results

    async def _one(
        self,
        client: TeacherClient,
        slots: TeacherSlots,
        local: asyncio.Semaphore,
        writer: BatchWriter,
        item: Item,
        params: GenerationParams,
    ) -> str | TeacherError:
        watch = self.runtime.jobs
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.settings.item_attempts),
                wait=wait_exponential(multiplier=0.5, max=4),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    async with local, slots.slot(give_up=lambda: watch.was_over(self.job_id)) as held:
                        # Checked with the slot in hand, right before the call: a cancelled job makes
                        # no further teacher calls (the status is at most STATUS_MAX_AGE_S old).
                        if not held or await watch.is_over(self.job_id):
                            raise _Cancelled
                        gen = await client.generate(item.example, item.demonstrations, params)
        except _Cancelled:
            return "cancelled"
        except TeacherError as exc:
            return exc
        writer.add((item, gen))
        return "stored"
