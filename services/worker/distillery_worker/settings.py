"""Worker knobs (env prefix DISTILLERY_WORKER_); the URLs come from the shared settings."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_prefix="DISTILLERY_WORKER_", extra="ignore")

    chunk_size: int = Field(8, ge=1, le=1000, description="Examples per chunk task (per teacher).")
    max_retries: int = Field(
        5, ge=0, le=50, description="Celery retries of a chunk before items fail for good."
    )
    retry_backoff_max: int = Field(
        60, ge=1, description="Cap of the exponential backoff between retries (s)."
    )
    item_attempts: int = Field(3, ge=1, le=10, description="Quick tries per teacher call within one run.")
    visibility_timeout: int = Field(
        3600, ge=5, description="Seconds before a task taken by a vanished worker is delivered again."
    )
    restore_interval: int = Field(
        10, ge=1, description="Seconds between sweeps that re-deliver tasks of vanished workers."
    )
    defer_after_s: float = Field(
        10.0,
        ge=0,
        description="A chunk whose teacher stays saturated this long goes back to the queue, freeing its "
        "worker slot for other teachers' chunks.",
    )
    slot_lease_s: float = Field(30.0, gt=1, description="Lifetime of an unrenewed teacher slot lease (s).")


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
