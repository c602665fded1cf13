"""The teacher contract: bodies of /v1/teachers and /v1/teachers/{name}/stats."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

from distillery.teachers.base import GenerationParams, TeacherSpec


class StrictGenerationParams(GenerationParams):
    model_config = ConfigDict(extra="forbid")


class CreateTeacher(TeacherSpec):
    """POST /v1/teachers: register a teacher, or bring an existing one (same name) to this configuration."""

    # A misspelt field must be a 422, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")
    params: StrictGenerationParams = StrictGenerationParams()


class Teacher(BaseModel):
    """A registered teacher; read from its database row."""

    model_config = ConfigDict(from_attributes=True)
    object: Literal["teacher"] = "teacher"
    id: int
    name: str
    backend: str
    base_url: str | None
    model: str | None
    api_style: str
    prefix: str
    template_version: str | None
    params: Annotated[dict, BeforeValidator(lambda params: params or {})]
    max_concurrency: int
    timeout_s: float
    created_at: datetime


class TeacherList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Teacher]


class TeacherStats(BaseModel):
    object: Literal["teacher.stats"] = "teacher.stats"
    teacher: str
    backend: str
    count: int
    truncated_pct: float | None
    agrees_pct: float | None
    disagrees_pct: float | None
    duplicate_pct: float | None
    mean_chars: float | None
    mean_completion_tokens: float | None
    tokens_per_s: float | None
