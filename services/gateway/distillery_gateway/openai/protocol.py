"""Pieces of the OpenAI schema shared by the completion and chat endpoints."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 4
MAX_N = 16


class OpenAIModel(BaseModel):
    """Requests reject unknown fields, naming them (as OpenAI does)."""

    model_config = ConfigDict(extra="forbid")


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class StreamOptions(OpenAIModel):
    include_usage: bool | None = Field(
        default=None, description="Send a last chunk with `usage` (and no choices)."
    )
    include_obfuscation: bool | None = Field(default=None, description="Accepted for compatibility; ignored.")


StopSequence = Annotated[str, Field(min_length=1, max_length=200)]
Stop = StopSequence | Annotated[list[StopSequence], Field(max_length=MAX_STOP)] | None

Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="0 = greedy (deterministic).")]
TopP = Annotated[float, Field(ge=0.0, le=1.0, description="Nucleus sampling mass; 0 = greedy.")]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, description="Only 0 is supported.")]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, description="Makes sampling reproducible.")]
ChoiceCount = Annotated[int, Field(ge=1, le=MAX_N, description=f"Choices to generate (at most {MAX_N}).")]


class GenerationRequest(OpenAIModel):
    """The fields the completion and chat requests share (sampling, streaming, unsupported knobs)."""

    model: str = Field(min_length=1, description="A served model id or alias (see GET /v1/models).")
    frequency_penalty: Penalty | None = 0.0
    logit_bias: dict[str, float] | None = Field(default=None, description="Not supported (only empty).")
    n: ChoiceCount | None = 1
    presence_penalty: Penalty | None = 0.0
    seed: Seed | None = None
    stop: Stop = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = 1.0
    top_p: TopP | None = 1.0
    user: str | None = Field(default=None, max_length=256)


class GenerationResponse(BaseModel):
    """What a response and each of its stream's chunks share; subclasses add `object` and `choices`."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None = None
