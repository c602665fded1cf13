"""Request and response bodies of POST /v1/chat/completions, field for field as OpenAI defines them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
    name: str | None = Field(None, max_length=64)
    refusal: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, description="Not supported (only empty).")


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(OpenAIModel):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    model: str = Field(min_length=1, description="A served model id or alias (see GET /v1/models).")
    frequency_penalty: Penalty | None = 0.0
    logit_bias: dict[str, float] | None = Field(None, description="Not supported (only empty).")
    logprobs: bool | None = Field(False, description="Return the chosen tokens' log-probabilities.")
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="Alternatives per token (needs logprobs)."
    )
    max_tokens: int | None = Field(None, ge=1, description="Deprecated alias of max_completion_tokens.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Tokens to generate; unset = the rest of the context, capped by the server."
    )
    n: ChoiceCount | None = 1
    presence_penalty: Penalty | None = 0.0
    response_format: ResponseFormat | None = Field(None, description="Only `text` is supported.")
    seed: Seed | None = None
    stop: Stop = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = 1.0
    top_p: TopP | None = 1.0
    tools: list[dict[str, Any]] | None = Field(None, description="Not supported (only empty).")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Only `none` (or unset) is supported.")
    parallel_tool_calls: bool | None = None
    user: str | None = Field(None, max_length=256)


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


class ChatCompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    system_fingerprint: str | None = None
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None


class ChatCompletionStreamResponse(BaseModel):
    """One server-sent event of a streamed chat completion; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    system_fingerprint: str | None = None
    usage: UsageInfo | None = None
