"""One chunk of a job: one teacher, a few examples, every missing sample generated and stored.

A chunk only fills what is missing (stored rationales and final failures are skipped), so a re-delivered
or retried chunk never calls the teacher for an item it already has. Calls run concurrently under the
teacher's cross-worker slot limit; each result is stored, with its progress, in its own transaction as
soon as it arrives, so a crash loses at most the calls in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from sqlalchemy import select
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from distillery.rationales.prompts import TEMPLATE_VERSION
from distillery.rationales.checks import agrees_with_gold, clean_rationale, is_duplicate, is_truncated
from distillery.records import Demonstration, Example
from distillery.store import jobs
from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.store.db import session_scope
from distillery.store.examples import to_record
from distillery.teachers import registry
from distillery.teachers.base import Generation, GenerationParams, TeacherClient, TeacherError, TeacherSpec
from distillery_worker.demos import demonstrations_for
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
        database_url: str,
        redis_url: str,
        settings: WorkerSettings,
        job_id: str,
        teacher_id: int,
        example_ids: list[int],
        attempt: int = 0,
        final: bool = False,
    ):
        self.database_url, self.redis_url, self.settings = database_url, redis_url, settings
        self.job_id, self.teacher_id, self.example_ids = job_id, teacher_id, example_ids
        self.attempt, self.final = attempt, final
        self._over_checked = (0.0, False)

    # ---------------------------------------------------------------- database side (synchronous)

    def _plan(self) -> tuple[TeacherSpec, list[Item], dict] | None:
        """The teacher, the items still missing and the generation overrides; None if the job is over."""
        with session_scope(self.database_url) as session:
            job = jobs.get_job(session, self.job_id)
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

    def _is_over(self) -> bool:
        with session_scope(self.database_url) as session:
            over = jobs.job_status(session, self.job_id) in jobs.TERMINAL
        self._over_checked = (time.monotonic(), over)
        return over

    def _was_over(self) -> bool:
        """`_is_over`, at most once a second: waiters for a slot ask it on every wake-up."""
        checked_at, over = self._over_checked
        return over if time.monotonic() - checked_at < 1.0 else self._is_over()

    def _store(self, spec: TeacherSpec, item: Item, gen: Generation) -> int:
        text = clean_rationale(gen.text)
        # A text cut before an invented follow-up question ended where the rationale ended, whatever
        # the finish reason says about the part that was cut off.
        cut = text != gen.text.strip()
        row = {
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
            "incontext_ids": [demo.example.id for demo in item.demonstrations],
            "truncated": is_truncated(text, None if cut else gen.finish_reason),
            "agrees_with_gold": agrees_with_gold(text, item.example),
            "duplicate": False,
        }
        with session_scope(self.database_url) as session:
            if item.sample_index:
                others = session.scalars(
                    select(m.Rationale.text).where(
                        m.Rationale.job_id == self.job_id,
                        m.Rationale.example_id == item.example_row_id,
                        m.Rationale.teacher_id == self.teacher_id,
                        m.Rationale.sample_index != item.sample_index,
                    )
                ).all()
                row["duplicate"] = is_duplicate(text, others)
            inserted = rat_store.upsert_rationales(session, [row])
            if inserted:
                jobs.add_progress(
                    session,
                    self.job_id,
                    self.teacher_id,
                    done=inserted,
                    prompt_tokens=gen.prompt_tokens or 0,
                    completion_tokens=gen.completion_tokens or 0,
                )
        return inserted

    def _fail(self, item: Item, error: str, attempts: int) -> None:
        with session_scope(self.database_url) as session:
            jobs.fail_item(
                session, self.job_id, self.teacher_id, item.example_row_id, item.sample_index, error, attempts
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
        try:
            client = registry.make_client(spec)
        except ValueError as exc:  # a teacher configured wrongly fails every item, for good
            for item in items:
                await asyncio.to_thread(self._fail, item, str(exc), 1)
            outcome.failed = len(items)
            return outcome
        params = job_params(spec, overrides)
        redis = aioredis.Redis.from_url(self.redis_url)
        try:
            slots = TeacherSlots(redis, self.teacher_id, spec.max_concurrency, self.settings.slot_lease_s)
            # Only as many items as the teacher takes at once compete for its slots; the rest wait here
            # at no cost instead of polling Redis.
            local = asyncio.Semaphore(spec.max_concurrency)
            async with slots:
                # A teacher kept busy by other chunks (a slow one) would hold this worker slot idle while
                # other teachers' chunks wait in the queue behind it: hand the chunk back instead.
                if not await slots.wait_for_room(self.settings.defer_after_s):
                    return Outcome(deferred=True)
                results = await asyncio.gather(
                    *(
                        self._one(client, slots, local, spec, item, sample_params(params, item.sample_index))
                        for item in items
                    )
                )
        finally:
            await client.aclose()
            await redis.aclose()
        for item, result in zip(items, results, strict=True):
            if result == "stored":
                outcome.stored += 1
            elif result == "cancelled":
                outcome.cancelled = True
            elif isinstance(result, TeacherError):
                attempts = (self.attempt + 1) * self.settings.item_attempts
                if result.retryable and not self.final:
                    outcome.retry.append((item, str(result)))
                else:
                    await asyncio.to_thread(self._fail, item, str(result), attempts)
                    outcome.failed += 1
        return outcome

    async def _one(
        self,
        client: TeacherClient,
        slots: TeacherSlots,
        local: asyncio.Semaphore,
        spec: TeacherSpec,
        item: Item,
        params: GenerationParams,
    ) -> str | TeacherError:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.settings.item_attempts),
                wait=wait_exponential(multiplier=0.5, max=4),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    async with local, slots.slot(give_up=self._was_over) as held:
                        # Checked with the slot in hand, right before the call: a cancelled job makes
                        # no further teacher calls.
                        if not held or await asyncio.to_thread(self._is_over):
                            raise _Cancelled
                        gen = await client.generate(item.example, item.demonstrations, params)
        except _Cancelled:
            return "cancelled"
        except TeacherError as exc:
            return exc
        await asyncio.to_thread(self._store, spec, item, gen)
        return "stored"
