"""Request and response bodies of POST /v1/completions, field for field as OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from distillery_gateway.openai.protocol import (
    ChoiceCount,
    OpenAIModel,
    Penalty,
    Seed,
    Stop,
    StreamOptions,
    Temperature,
    TopP,
    UsageInfo,
)

TokenId = Annotated[int, Field(ge=0)]
Prompt = (
    Annotated[str, Field(description="One prompt.")]
    | Annotated[list[str], Field(min_length=1, max_length=64, description="Several prompts.")]
    | Annotated[list[TokenId], Field(min_length=1, description="One prompt as token ids.")]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=64)]
)


class CompletionRequest(OpenAIModel):
    model: str = Field(min_length=1, description="A served model id or alias (see GET /v1/models).")
    prompt: Prompt
    best_of: int | None = Field(None, ge=1, le=16, description="Only equal to `n` (or unset) is supported.")
    echo: bool | None = Field(False, description="Prepend the prompt to each choice's text.")
    frequency_penalty: Penalty | None = 0.0
    logit_bias: dict[str, float] | None = Field(None, description="Not supported (only empty).")
    logprobs: int | None = Field(
        None, ge=0, le=5, description="Alternatives per token; 0 = the chosen one only."
    )
    max_tokens: int | None = Field(16, ge=1, description="Tokens to generate (OpenAI's default: 16).")
    n: ChoiceCount | None = 1
    presence_penalty: Penalty | None = 0.0
    seed: Seed | None = None
    stop: Stop = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = Field(None, description="Not supported (only null).")
    temperature: Temperature | None = 1.0
    top_p: TopP | None = 1.0
    user: str | None = Field(None, max_length=256)


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    finish_reason: Literal["stop", "length", "content_filter"] | None
    index: int
    logprobs: CompletionLogprobs | None = None
    text: str


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
    usage: UsageInfo


class CompletionStreamResponse(BaseModel):
    """One server-sent event of a streamed completion (`data: {...}`; the stream ends with `data: [DONE]`)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
    usage: UsageInfo | None = None
