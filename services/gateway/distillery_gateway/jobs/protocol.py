"""The rationale-job contract: request and response bodies of /v1/rationale-jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from distillery.datasets import SPLITS
from distillery.rationales.incontext import STRATEGIES
from distillery.store.rationales import RationaleFilter
from distillery_gateway.pagination import CursorPage, ListQuery

MAX_IDS = 100_000
JobStatus = Literal["queued", "running", "completed", "completed_with_errors", "cancelled", "failed"]
STATUSES = get_args(JobStatus)
JobKind = Literal["generate", "import"]
# The query of GET /v1/rationale-jobs/{job_id}/rationales: filters, `after` + `limit`.
RationaleQuery = RationaleFilter


class _Strict(BaseModel):
    # Unknown fields are a 422, not silently ignored: a typo must not fall back to a default.
    model_config = ConfigDict(extra="forbid")


class InContext(_Strict):
    """How demonstrations are chosen: `k` examples of the same split, never the target itself."""

    strategy: Literal["random", "knn", "none"] = Field(
        default="random", description=f"One of {', '.join(STRATEGIES)}."
    )
    k: int = Field(default=2, ge=0, le=16, description="Demonstrations per prompt (0 with strategy 'none').")
    seed: int = Field(default=0, ge=0, description="Seed of the random draw.")

    @field_validator("k")
    @classmethod
    def _k_matches_strategy(cls, k: int, info: ValidationInfo) -> int:
        if info.data.get("strategy") == "none" and k != 0:
            raise ValueError("strategy 'none' shows no demonstrations; set k to 0 or pick 'random' or 'knn'")
        return k


class GenerationOverrides(_Strict):
    """Sampling parameters for this job; unset fields keep the teacher's own."""

    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = Field(default=None, max_length=8)
    seed: int | None = Field(default=None, ge=0)

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, stop: list[str] | None) -> list[str] | None:
        if stop is not None and any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        return stop


class CreateRationaleJob(_Strict):
    """POST /v1/rationale-jobs. Selection: the first `limit` examples of the split, or exactly `ids`, or
    the whole split."""

    dataset: str = Field(..., min_length=1, max_length=100, description="A stored dataset's name.")
    split: Literal["train", "dev", "test"] = Field(
        default="train", description=f"One of {', '.join(SPLITS)}."
    )
    limit: int | None = Field(default=None, ge=1, le=10_000_000)
    ids: list[str] | None = Field(default=None, min_length=1, max_length=MAX_IDS, description="Example ids.")
    teachers: list[str] = Field(..., min_length=1, max_length=32, description="Registered teacher names.")
    in_context: InContext = Field(default_factory=InContext)
    samples_per_example: int = Field(default=1, ge=1, le=16)
    generation: GenerationOverrides = Field(default_factory=GenerationOverrides)

    @field_validator("ids")
    @classmethod
    def _ids_or_limit(cls, ids: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if ids is None:
            return ids
        if info.data.get("limit") is not None:
            raise ValueError("give either 'limit' or 'ids', not both")
        if any(not i.strip() for i in ids):
            raise ValueError("example ids must be non-empty strings")
        if len(set(ids)) != len(ids):
            raise ValueError("example ids must not repeat")
        return ids

    @field_validator("teachers")
    @classmethod
    def _distinct_teachers(cls, teachers: list[str]) -> list[str]:
        if len(set(teachers)) != len(teachers):
            raise ValueError("teacher names must not repeat")
        return teachers


class TeacherProgress(BaseModel):
    teacher: str
    total: int
    done: int
    failed: int
    prompt_tokens: int
    completion_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class JobError(BaseModel):
    example_id: str
    teacher: str
    sample_index: int
    error: str
    attempts: int


class RationaleJob(BaseModel):
    id: str
    object: Literal["rationale_job"] = "rationale_job"
    kind: JobKind = Field(default="generate", description="import: a precomputed rationale file.")
    status: str = Field(..., description=f"One of {', '.join(STATUSES)}.")
    dataset: str
    split: str
    teachers: list[str]
    in_context: dict
    samples_per_example: int
    generation: dict
    total: int
    done: int
    failed: int
    progress: list[TeacherProgress]
    usage: Usage
    errors: list[JobError] = Field(default_factory=list, description="The first failures (see error_count).")
    error_count: int = 0
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobQuery(ListQuery):
    """GET /v1/rationale-jobs: newest first, `after` + `limit`, optionally one status and kind."""

    status: JobStatus | None = None
    kind: JobKind = Field(default="generate", description="import: jobs that stored a rationale file.")


class RationaleJobList(CursorPage):
    data: list[RationaleJob]
    first_id: str | None = None
    last_id: str | None = None


class Rationale(BaseModel):
    """One stored rationale; read from a row of `distillery.store.rationales.list_rationales`."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    object: Literal["rationale"] = "rationale"
    job_id: str
    example_id: str
    teacher: str
    sample_index: int
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    template_version: str | None
    incontext_ids: Annotated[list[str], BeforeValidator(lambda ids: list(ids or []))]
    truncated: bool
    agrees_with_gold: bool | None
    duplicate: bool
    created_at: datetime


class RationaleList(CursorPage):
    data: list[Rationale]
    first_id: int | None = None
    last_id: int | None = None
