"""Request and response bodies of POST /v1/chat/completions, field for field as OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from distillery_gateway.openai.protocol import (
    GenerationRequest,
    GenerationResponse,
    OpenAIModel,
    UsageInfo,
)


class TextContentPart(OpenAIModel):
    type: Literal["text"]
    text: str


class OtherContentPart(BaseModel):
    """Image, audio and file parts are part of the schema but not served by a text-only student."""

    type: Literal["image_url", "input_audio", "file", "refusal"]
    model_config = {"extra": "allow"}


ContentPart = Annotated[TextContentPart | OtherContentPart, Field(discriminator="type")]


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)] | None = None
    name: str | None = Field(default=None, max_length=64)
    refusal: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(default=None, description="Not supported (only empty).")


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    logprobs: bool | None = Field(default=False, description="Return the chosen tokens' log-probabilities.")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Alternatives per token (needs logprobs)."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Deprecated alias of max_completion_tokens."
    )
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens to generate; unset = the rest of the context, capped by the server.",
    )
    response_format: ResponseFormat | None = Field(default=None, description="Only `text` is supported.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Not supported (only empty).")
    tool_choice: str | dict[str, Any] | None = Field(
        default=None, description="Only `none` (or unset) is supported."
    )
    parallel_tool_calls: bool | None = None


ChatFinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChoiceBase(BaseModel):
    """What a choice and a streamed choice share."""

    index: int
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChoice(ChoiceBase):
    message: AssistantMessage
    finish_reason: ChatFinishReason


class ChatCompletionResponse(GenerationResponse):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(ChoiceBase):
    delta: DeltaMessage
    finish_reason: ChatFinishReason | None = None


class ChatCompletionStreamResponse(GenerationResponse):
    """One server-sent event of a streamed chat completion; the stream ends with `data: [DONE]`."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None
