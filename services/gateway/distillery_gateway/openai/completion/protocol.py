"""Request and response bodies of POST /v1/completions, field for field as OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from distillery_gateway.openai.protocol import GenerationRequest, GenerationResponse, UsageInfo

TokenId = Annotated[int, Field(ge=0)]
Prompt = (
    Annotated[str, Field(description="One prompt.")]
    | Annotated[list[str], Field(min_length=1, max_length=64, description="Several prompts.")]
    | Annotated[list[TokenId], Field(min_length=1, description="One prompt as token ids.")]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=64)]
)


class CompletionRequest(GenerationRequest):
    prompt: Prompt
    best_of: int | None = Field(
        default=None, ge=1, le=16, description="Only equal to `n` (or unset) is supported."
    )
    echo: bool | None = Field(default=False, description="Prepend the prompt to each choice's text.")
    logprobs: int | None = Field(
        default=None, ge=0, le=5, description="Alternatives per token; 0 = the chosen one only."
    )
    max_tokens: int | None = Field(default=16, ge=1, description="Tokens to generate (OpenAI's default: 16).")
    suffix: str | None = Field(default=None, description="Not supported (only null).")


FinishReason = Literal["stop", "length", "content_filter"]


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    finish_reason: FinishReason | None
    index: int
    logprobs: CompletionLogprobs | None = None
    text: str


class CompletionResponse(GenerationResponse):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionStreamResponse(CompletionResponse):
    """One server-sent event of a streamed completion (`data: {...}`; the stream ends with `data: [DONE]`)."""

    usage: UsageInfo | None = None  # type: ignore[assignment]  # only on the last chunk, if asked for
