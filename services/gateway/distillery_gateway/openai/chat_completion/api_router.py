"""POST /v1/chat/completions (scope `infer`)."""

from __future__ import annotations

from distillery_gateway.openai.api_route import generation_router
from distillery_gateway.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
)
from distillery_gateway.openai.chat_completion.serving import ChatServing

router = generation_router(
    "/v1/chat/completions",
    "create_chat_completion",
    ChatServing,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    "OpenAI chat completions, rendered with the model's chat template; `stream: true` for SSE.",
)
