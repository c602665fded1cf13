"""POST /v1/chat/completions (scope `infer`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from distillery_gateway.deps import require_scope
from distillery_gateway.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from distillery_gateway.openai.responses import serving_responses
from distillery_gateway.serving_base import json_response

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=serving_responses("ChatCompletionStreamResponse"),
    dependencies=[require_scope("infer")],
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """OpenAI chat completions, rendered with the model's chat template; `stream: true` for SSE."""
    return json_response(await request.app.state.serving_chat.create(body))
