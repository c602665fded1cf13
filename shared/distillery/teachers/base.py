"""The teacher interface: a teacher turns a teacher-forced prompt into one rationale."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from distillery.records import Demonstration, Example

BACKENDS = ("openai", "tgi", "precomputed")
API_STYLES = ("chat", "completion")


class GenerationParams(BaseModel):
    """Sampling parameters; generous max_tokens so rationales are not cut mid-sentence."""

    max_tokens: int = Field(256, ge=1, le=8192)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = None


class TeacherSpec(BaseModel):
    """A teacher is configuration (mirrors the `teacher` table)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    backend: Literal["openai", "tgi", "precomputed"] = "openai"
    base_url: str | None = None
    model: str | None = None
    api_style: Literal["chat", "completion"] = "chat"
    prefix: str | None = None  # instruction prefix the student sees for this teacher's task
    template_version: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    max_concurrency: int = Field(4, ge=1, le=1024)
    timeout_s: float = Field(120.0, gt=0, le=3600)


@dataclass
class Generation:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    extra: dict = field(default_factory=dict)


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
