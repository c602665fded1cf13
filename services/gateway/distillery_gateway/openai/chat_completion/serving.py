"""POST /v1/chat/completions against the served student (its chat template renders the messages)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import cast

from fastapi.responses import Response

from distillery_gateway.engine.types import Delta, Generation, SamplingParams
from distillery_gateway.engine.types import TokenLogprob as EngineLogprob
from distillery_gateway.errors import APIError
from distillery_gateway.openai.chat_completion.protocol import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatFinishReason,
    ChatMessage,
    ChoiceLogprobs,
    DeltaMessage,
    TextContentPart,
    TokenLogprob,
    TopLogprob,
)
from distillery_gateway.openai.protocol import UsageInfo
from distillery_gateway.serving_base import ServingBase, engine_errors, new_id, now


def message_text(message: ChatMessage, index: int) -> str:
    """The text of a message; non-text parts are refused (the student reads text only)."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if not isinstance(part, TextContentPart):
            raise APIError(
                400,
                f"messages.{index}.content: '{part.type}' parts are not supported (accepted: text)",
                param=f"messages.{index}.content",
                code="unsupported_content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def chat_logprobs(tokens: list[EngineLogprob] | None) -> ChoiceLogprobs | None:
    if tokens is None:
        return None
    content = [
        TokenLogprob(
            token=t.token,
            logprob=t.logprob if t.logprob is not None else 0.0,
            bytes=list(t.token.encode()),
            top_logprobs=[TopLogprob(token=k, logprob=v, bytes=list(k.encode())) for k, v in t.top.items()],
        )
        for t in tokens
    ]
    return ChoiceLogprobs(content=content)


class ChatServing(ServingBase):
    route = "/v1/chat/completions"

    def check_supported(self, req: ChatCompletionRequest) -> None:
        self.check_generation(req)
        if req.tools:
            raise self.unsupported("tools", "null or []")
        if req.tool_choice not in (None, "none"):
            raise self.unsupported("tool_choice", "null or 'none'")
        if req.response_format is not None and req.response_format.type != "text":
            raise self.unsupported("response_format", "{'type': 'text'}")
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(
                400, "top_logprobs: needs logprobs set to true", param="top_logprobs", code="invalid_value"
            )
        if req.stream and req.logprobs:
            raise self.unsupported("logprobs", "false when stream is true")
        for i, message in enumerate(req.messages):
            if message.tool_calls:
                raise self.unsupported(f"messages.{i}.tool_calls", "null or []")

    async def create(
        self, req: ChatCompletionRequest, caller: str | None = None
    ) -> ChatCompletionResponse | Response:
        self.check_supported(req)
        messages = [{"role": m.role, "content": message_text(m, i)} for i, m in enumerate(req.messages)]
        stack = AsyncExitStack()
        streaming = False
        try:
            served, backend = await self.lease(stack, req.model)
            try:
                prompt_ids = backend.codec.chat_ids(messages)
            except Exception as exc:  # a template may refuse e.g. roles out of order
                raise APIError(
                    400,
                    f"messages: the model's chat template rejected them: {exc}",
                    param="messages",
                    code="invalid_value",
                ) from None
            wanted = req.max_completion_tokens or req.max_tokens
            max_tokens = self.max_tokens(backend, len(prompt_ids), wanted, "messages")
            if req.logprobs:
                max_tokens = self.bound_logprobs(max_tokens, wanted, req.n or 1)
            params = self.sampling(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
            tokens = (len(prompt_ids) * params.n, max_tokens * params.n)
            await self.admit(stack, caller, params.n, tokens, "n")
            if req.stream:
                with engine_errors(self.manager):
                    stream = self.close_with(stack, backend.stream(prompt_ids, params))
                streaming = True
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                return self.sse(stack, self._events(served.id, params, stream, include_usage))
            with engine_errors(self.manager):
                gen = await backend.generate(prompt_ids, params)
            return self._response(served.id, gen)
        finally:
            if not streaming:
                await stack.aclose()

    def _response(self, model: str, gen: Generation) -> ChatCompletionResponse:
        choices = [
            ChatCompletionChoice(
                index=i,
                message=AssistantMessage(content=c.text),
                finish_reason=cast(ChatFinishReason, c.finish_reason),
                logprobs=chat_logprobs(c.logprobs),
            )
            for i, c in enumerate(gen.choices)
        ]
        usage = self.usage(gen.prompt_tokens, gen.completion_tokens)
        return ChatCompletionResponse(
            id=new_id("chatcmpl"), created=now(), model=model, choices=choices, usage=usage
        )

    async def _events(
        self,
        model: str,
        params: SamplingParams,
        stream: AsyncIterator[Delta | Generation],
        include_usage: bool,
    ) -> AsyncIterator[ChatCompletionStreamResponse]:
        rid, created = new_id("chatcmpl"), now()

        def chunk(
            choices: list[ChatCompletionStreamChoice], usage: UsageInfo | None = None
        ) -> ChatCompletionStreamResponse:
            return ChatCompletionStreamResponse(
                id=rid, created=created, model=model, choices=choices, usage=usage
            )

        # OpenAI opens each choice with the role and an empty content.
        yield chunk(
            [
                ChatCompletionStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
                for i in range(params.n)
            ]
        )
        gen: Generation | None = None
        async for item in stream:
            if isinstance(item, Generation):
                gen = item
            elif item.text or item.finish_reason:
                delta = DeltaMessage(content=item.text) if item.text else DeltaMessage()
                yield chunk(
                    [
                        ChatCompletionStreamChoice(
                            index=item.index,
                            delta=delta,
                            finish_reason=cast(ChatFinishReason | None, item.finish_reason),
                        )
                    ]
                )
        if gen is not None:
            usage = self.usage(gen.prompt_tokens, gen.completion_tokens)
            if include_usage:
                yield chunk([], usage)
