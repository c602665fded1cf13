"""POST /v1/completions (scope `infer`)."""

from __future__ import annotations

from distillery_gateway.openai.api_route import generation_router
from distillery_gateway.openai.completion.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
)
from distillery_gateway.openai.completion.serving import CompletionServing

router = generation_router(
    "/v1/completions",
    "create_completion",
    CompletionServing,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    "OpenAI completions: text or token-id prompts, `n`, `stop`, `seed`, `logprobs`, `echo`, streaming.",
)
