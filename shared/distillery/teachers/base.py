"""The teacher interface: a teacher turns a teacher-forced prompt into one rationale."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, Field

from distillery.records import Demonstration, Example

Backend = Literal["openai", "tgi", "precomputed"]
ApiStyle = Literal["chat", "completion"]
# The accepted values, for messages and CLI choices; the literals above are the one list.
BACKENDS: tuple[str, ...] = get_args(Backend)
API_STYLES: tuple[str, ...] = get_args(ApiStyle)


class GenerationParams(BaseModel):
    """Sampling parameters; generous max_tokens so rationales are not cut mid-sentence."""

    # `default=` by keyword: type checkers read only that as a default (dataclass_transform).
    max_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = None


class TeacherSpec(BaseModel):
    """A teacher is configuration (mirrors the `teacher` table)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    backend: Backend = "openai"
    base_url: str | None = None
    model: str | None = None
    api_style: ApiStyle = "chat"
    prefix: str | None = None  # instruction prefix the student sees for this teacher's task
    template_version: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    max_concurrency: int = Field(default=4, ge=1, le=1024)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)  # one deadline for the whole call


@dataclass
class Generation:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


class TeacherError(Exception):
    """A failed call. `retryable` separates transport errors/5xx/timeouts from bad requests."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class TeacherClient(Protocol):
    spec: TeacherSpec

    async def generate(
        self, example: Example, demonstrations: list[Demonstration], params: GenerationParams
    ) -> Generation: ...

    async def aclose(self) -> None: ...
