"""Trainer knobs (env prefix DISTILLERY_TRAINER_); the URLs come from the shared settings."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_prefix="DISTILLERY_TRAINER_", extra="ignore")

    visibility_timeout: int = Field(
        default=24 * 3600,
        ge=5,
        description="Seconds before the broker re-delivers a run whose trainer vanished (runs are long; "
        "the orphan sweep normally resumes them much sooner).",
    )
    nproc_per_node: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes (GPUs) per run: above 1 the run is launched with torchrun, one rank per GPU.",
    )
    sweep_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often an idle or busy trainer looks for orphaned runs to re-queue.",
    )


@lru_cache
def get_trainer_settings() -> TrainerSettings:
    return TrainerSettings()
