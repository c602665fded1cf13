"""POST /v1/completions against the served student."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import cast

from fastapi.responses import Response

from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.types import Delta, Generation, SamplingParams, TokenLogprob
from distillery_gateway.errors import APIError
from distillery_gateway.openai.completion.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    FinishReason,
)
from distillery_gateway.serving_base import ServingBase, engine_errors, merge, new_id, now


def completion_logprobs(tokens: list[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for t in tokens:
        out.text_offset.append(offset)
        out.tokens.append(t.token)
        out.token_logprobs.append(t.logprob)
        out.top_logprobs.append(t.top or None)
        offset += len(t.token)
    return out


class CompletionServing(ServingBase):
    """Completes one or several prompts; several prompts (and `n`) share batched generate calls."""

    route = "/v1/completions"

    def check_supported(self, req: CompletionRequest) -> None:
        self.check_generation(req)
        if req.suffix:
            raise self.unsupported("suffix", "null")
        if req.best_of is not None and req.best_of != (req.n or 1):
            raise self.unsupported("best_of", "null or equal to n")
        if req.stream and req.logprobs is not None:
            raise self.unsupported("logprobs", "null when stream is true")

    def prompts(self, req: CompletionRequest, backend: Backend) -> list[tuple[str, list[int]]]:
        """(text to echo, token ids) per prompt."""
        prompt = req.prompt
        if isinstance(prompt, str):
            items: list = [prompt]
        elif prompt and isinstance(prompt[0], int):
            items = [prompt]
        else:
            items = list(prompt)
        out = []
        for item in items:
            if isinstance(item, str):
                out.append((item, backend.codec.encode(item)))
            else:
                vocab = len(backend.codec.tokenizer)
                if max(item) >= vocab:
                    raise APIError(
                        400,
                        f"prompt: token id {max(item)} is outside the vocabulary (0..{vocab - 1})",
                        param="prompt",
                        code="invalid_value",
                    )
                out.append((backend.codec.decode(item, skip_special_tokens=False), list(item)))
        return out

    async def create(
        self, req: CompletionRequest, caller: str | None = None
    ) -> CompletionResponse | Response:
        self.check_supported(req)
        stack = AsyncExitStack()
        streaming = False
        try:
            served, backend = await self.lease(stack, req.model)
            prompts = self.prompts(req, backend)
            longest = max(len(ids) for _, ids in prompts)
            max_tokens = self.max_tokens(backend, longest, req.max_tokens, "prompt")
            if req.logprobs is not None:
                max_tokens = self.bound_logprobs(max_tokens, req.max_tokens, len(prompts) * (req.n or 1))
            params = self.sampling(req, max_tokens, req.logprobs, echo=bool(req.echo))
            rows = len(prompts) * params.n
            prompt_tokens = sum(len(ids) for _, ids in prompts) * params.n
            await self.admit(stack, caller, rows, (prompt_tokens, rows * max_tokens), "prompt")
            if req.stream:
                with engine_errors(self.manager):
                    streams = [self.close_with(stack, backend.stream(ids, params)) for _, ids in prompts]
                streaming = True
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                events = self._events(served.id, prompts, params, streams, include_usage)
                return self.sse(stack, events)
            with engine_errors(self.manager):
                if len(prompts) == 1:
                    generations = [await backend.generate(prompts[0][1], params)]
                else:
                    generations = await asyncio.gather(*(backend.generate(ids, params) for _, ids in prompts))
            return self._response(served.id, prompts, params, generations)
        finally:
            if not streaming:
                await stack.aclose()

    def _response(
        self, model: str, prompts: list[tuple[str, list[int]]], params: SamplingParams, gens: list[Generation]
    ) -> CompletionResponse:
        choices = []
        for p, ((text, _), gen) in enumerate(zip(prompts, gens, strict=True)):
            for j, c in enumerate(gen.choices):
                logprobs = None
                if params.logprobs is not None:
                    tokens = (
                        [*(gen.prompt_logprobs or []), *(c.logprobs or [])]
                        if params.echo
                        else c.logprobs or []
                    )
                    logprobs = completion_logprobs(tokens)
                body = text + c.text if params.echo else c.text
                choices.append(
                    CompletionChoice(
                        index=p * params.n + j,
                        text=body,
                        finish_reason=cast(FinishReason, c.finish_reason),
                        logprobs=logprobs,
                    )
                )
        usage = self.usage(sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens))
        return CompletionResponse(id=new_id("cmpl"), created=now(), model=model, choices=choices, usage=usage)

    async def _events(
        self,
        model: str,
        prompts: list[tuple[str, list[int]]],
        params: SamplingParams,
        streams: list[AsyncIterator[Delta | Generation]],
        include_usage: bool,
    ) -> AsyncIterator[CompletionStreamResponse]:
        rid, created = new_id("cmpl"), now()

        def chunk(index: int, text: str, reason: str | None) -> CompletionStreamResponse:
            choice = CompletionChoice(index=index, text=text, finish_reason=cast(FinishReason | None, reason))
            return CompletionStreamResponse(id=rid, created=created, model=model, choices=[choice])

        if params.echo:
            for p, (text, _) in enumerate(prompts):
                for j in range(params.n):
                    yield chunk(p * params.n + j, text, None)
        prompt_tokens = completion_tokens = 0
        async for p, item in merge(streams):
            if isinstance(item, Generation):
                prompt_tokens += item.prompt_tokens
                completion_tokens += item.completion_tokens
            elif item.text or item.finish_reason:
                yield chunk(p * params.n + item.index, item.text, item.finish_reason)
        usage = self.usage(prompt_tokens, completion_tokens)
        if include_usage:
            yield CompletionStreamResponse(id=rid, created=created, model=model, choices=[], usage=usage)
