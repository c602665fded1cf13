"""Worker knobs (env prefix DISTILLERY_WORKER_); the URLs come from the shared settings."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_prefix="DISTILLERY_WORKER_", extra="ignore")

    chunk_size: int = Field(default=8, ge=1, le=1000, description="Examples per chunk task (per teacher).")
    max_retries: int = Field(
        default=5, ge=0, le=50, description="Celery retries of a chunk before items fail for good."
    )
    retry_backoff_max: int = Field(
        default=60, ge=1, description="Cap of the exponential backoff between retries (s)."
    )
    item_attempts: int = Field(
        default=3, ge=1, le=10, description="Quick tries per teacher call within one run."
    )
    visibility_timeout: int = Field(
        default=3600, ge=5, description="Seconds before a task taken by a vanished worker is delivered again."
    )
    restore_interval: int = Field(
        default=10, ge=1, description="Seconds between sweeps that re-deliver tasks of vanished workers."
    )
    defer_after_s: float = Field(
        default=10.0,
        ge=0,
        description="A chunk whose teacher stays saturated this long goes back to the queue, freeing its "
        "worker slot for other teachers' chunks.",
    )
    slot_lease_s: float = Field(
        default=30.0, gt=1, description="Lifetime of an unrenewed teacher slot lease (s)."
    )
    chunks_in_flight: int = Field(
        default=16,
        ge=1,
        le=10000,
        description="Chunk messages per (job, teacher) waiting in the queue at most; more are sent as "
        "chunks finish (a job of any size has a bounded footprint in Redis).",
    )
    flush_items: int = Field(
        default=64, ge=1, le=1000, description="A chunk stores its results every N items..."
    )
    flush_ms: float = Field(
        default=200.0, gt=0, description="...or every T milliseconds, whichever comes first."
    )
    chunk_deadline_s: float | None = Field(
        default=None,
        gt=0,
        description="Longest a chunk runs; must stay below the visibility timeout, or a slow chunk would be "
        "delivered again while it runs (duplicate teacher calls). Unset: 80% of it, at most 900 s.",
    )

    @property
    def chunk_deadline(self) -> float:
        if self.chunk_deadline_s is not None:
            return self.chunk_deadline_s
        return min(900.0, 0.8 * self.visibility_timeout)

    @model_validator(mode="after")
    def _deadline_below_visibility_timeout(self) -> WorkerSettings:
        if self.chunk_deadline_s is not None and self.chunk_deadline_s >= self.visibility_timeout:
            raise ValueError(
                f"DISTILLERY_WORKER_CHUNK_DEADLINE_S ({self.chunk_deadline_s:g}) must be below "
                f"DISTILLERY_WORKER_VISIBILITY_TIMEOUT ({self.visibility_timeout})"
            )
        return self


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
