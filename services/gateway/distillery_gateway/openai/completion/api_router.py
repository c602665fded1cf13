"""POST /v1/completions (scope `infer`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from distillery_gateway.deps import require_scope
from distillery_gateway.openai.completion.protocol import (
    CompletionRequest,
    CompletionResponse,
)
from distillery_gateway.openai.responses import serving_responses
from distillery_gateway.serving_base import json_response

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses=serving_responses("CompletionStreamResponse"),
    dependencies=[require_scope("infer")],
)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """OpenAI completions: text or token-id prompts, `n`, `stop`, `seed`, `logprobs`, `echo`, streaming."""
    return json_response(await request.app.state.serving_completion.create(body))
