"""What every serving class shares: engine errors as HTTP errors, context limits, streaming plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.responses import Response

from distillery.config import Settings
from distillery_gateway.admission import Admission
from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.manager import ModelManager, ModelNotFound, ServedModel
from distillery_gateway.engine.types import (
    EngineError,
    ModelNotReady,
    QueueFull,
    SamplingParams,
    UpstreamError,
)
from distillery_gateway.errors import APIError, error_body
from distillery_gateway.metrics import GatewayMetrics
from distillery_gateway.openai.protocol import GenerationRequest, UsageInfo

log = logging.getLogger(__name__)

RETRY_QUEUE_FULL_S = 1
RETRY_LOADING_S = 5

T = TypeVar("T")


def json_response(result: BaseModel | Response) -> Response:
    """A serving result as the HTTP response: already validated models skip FastAPI's second pass."""
    if isinstance(result, Response):
        return result
    return Response(result.model_dump_json(), media_type="application/json")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def to_api_error(exc: Exception, served: Sequence[str] = ()) -> APIError:
    """The HTTP answer to an engine failure."""
    if isinstance(exc, QueueFull):
        return APIError(
            503,
            f"server busy: {exc}; retry after {RETRY_QUEUE_FULL_S} s",
            code="queue_full",
            headers={"Retry-After": str(RETRY_QUEUE_FULL_S)},
        )
    if isinstance(exc, ModelNotReady):
        return APIError(503, str(exc), code="model_loading", headers={"Retry-After": str(RETRY_LOADING_S)})
    if isinstance(exc, ModelNotFound):
        return APIError(
            404,
            f"The model `{exc.args[0]}` does not exist or is not served here (served: {', '.join(served)})",
            param="model",
            code="model_not_found",
        )
    if isinstance(exc, UpstreamError):
        return APIError(exc.status, str(exc), code="upstream_error")
    return APIError(503, str(exc), code="engine_error")


@contextlib.contextmanager
def engine_errors(manager: ModelManager) -> Iterator[None]:
    """Turn engine exceptions raised inside the block into APIError."""
    try:
        yield
    except (EngineError, ModelNotFound) as exc:
        served = manager.current.names if manager.current else ()
        raise to_api_error(exc, served) from None


async def merge(streams: Sequence[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """Items of several async iterators as they come, tagged with the iterator's position."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: AsyncIterator[Any]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((i, exc))
        finally:
            await queue.put((i, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]


class ServingBase:
    """Holds the model manager and settings; leases the served model for one request."""

    route = ""  # the route it serves, as the request metrics name it

    def __init__(
        self,
        manager: ModelManager,
        settings: Settings,
        metrics: GatewayMetrics,
        admission: Admission | None = None,
    ):
        self.manager, self.settings, self.metrics = manager, settings, metrics
        self.admission = admission

    async def admit(
        self,
        stack: AsyncExitStack,
        caller: str | None,
        sequences: int,
        tokens: tuple[int, int],
        param: str,
    ) -> None:
        """Charge `caller` (a key id) `tokens` (prompt, most completion) and hold `sequences` of its
        share of the queue until `stack` closes (see `admission`)."""
        if self.admission is None or caller is None:
            return
        stack.enter_context(self.admission.share(caller, sequences, param))
        await self.admission.charge(caller, *tokens)

    async def lease(self, stack: AsyncExitStack, model: str | None) -> tuple[ServedModel, Backend]:
        with engine_errors(self.manager):
            return await stack.enter_async_context(self.manager.lease(model))

    def max_tokens(self, backend: Backend, prompt_len: int, wanted: int | None, param: str) -> int:
        """`wanted` (or the server's default cap) if prompt + completion fit the context; else a 400."""
        context = backend.codec.max_context
        room = context - prompt_len
        if wanted is None:
            wanted = min(room, self.settings.max_tokens_default)
        if wanted < 1 or prompt_len + wanted > context:
            asked = max(wanted, 1)
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_len + asked} tokens ({prompt_len} in the {param}, {asked} for the completion). "
                "Please reduce the length of the prompt or of the completion.",
                param=param,
                code="context_length_exceeded",
            )
        return wanted

    def bound_logprobs(self, max_tokens: int, wanted: int | None, rows: int) -> int:
        """`max_tokens` for a request that wants logprobs, kept within DISTILLERY_MAX_LOGPROB_TOKENS.

        Generated tokens with logprobs are rows (prompts x n) x max_tokens. Without an explicit
        max_tokens the completion shrinks to fit; with one, 400 naming `logprobs`. (An echoed prompt is
        scored in chunks of a few dozen positions, its memory bounded whatever its length: not counted.)
        """
        cap = self.settings.max_logprob_tokens
        if wanted is None:
            max_tokens = max(1, min(max_tokens, cap // rows))
        scored = rows * max_tokens
        if scored > cap:
            raise APIError(
                400,
                f"logprobs: this request would generate {scored} tokens with logprobs ({rows} completions "
                f"x {max_tokens} tokens); the limit is {cap} (DISTILLERY_MAX_LOGPROB_TOKENS). Lower n, "
                "max_tokens or the number of prompts.",
                param="logprobs",
                code="logprobs_too_many_tokens",
            )
        return max_tokens

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.metrics.tokens.labels("prompt").inc(prompt)
        self.metrics.tokens.labels("completion").inc(completion)

    def usage(self, prompt: int, completion: int) -> UsageInfo:
        """Count the tokens in the metrics; their usage for the response."""
        self.count_tokens(prompt, completion)
        return UsageInfo.of(prompt, completion)

    def check_generation(self, req: GenerationRequest) -> None:
        """400 for what neither generation endpoint serves (logit bias, penalties)."""
        if req.logit_bias:
            raise self.unsupported("logit_bias", "null or {}")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(req, name):
                raise self.unsupported(name, "0")

    @staticmethod
    def sampling(
        req: GenerationRequest, max_tokens: int, logprobs: int | None, echo: bool = False
    ) -> SamplingParams:
        """The engine's parameters of a request (OpenAI semantics: top_p 0 = greedy)."""
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        temperature = req.temperature if req.temperature is not None else 1.0
        top_p = req.top_p if req.top_p is not None else 1.0
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if top_p == 0.0 else temperature,
            top_p=top_p or 1.0,
            stop=stop,
            seed=req.seed,
            n=req.n or 1,
            logprobs=logprobs,
            echo=echo,
        )

    @staticmethod
    def close_with(stack: AsyncExitStack, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """`stream` (an engine's async generator), closed when `stack` is."""
        stack.push_async_callback(cast(AsyncGenerator[T, None], stream).aclose)
        return stream

    @staticmethod
    def unsupported(param: str, accepted: str) -> APIError:
        return APIError(
            400,
            f"{param}: not supported by this server (accepted: {accepted})",
            param=param,
            code="unsupported_parameter",
        )

    def sse(self, stack: AsyncExitStack, events: AsyncIterator[BaseModel | dict]) -> EventSourceResponse:
        """Stream `events` as `data: {...}` lines, then `data: [DONE]`; the lease ends with the stream."""

        async def body() -> AsyncIterator[dict[str, str]]:
            try:
                async for event in events:
                    data = event.model_dump_json() if isinstance(event, BaseModel) else json.dumps(event)
                    yield {"data": data}
            except (asyncio.CancelledError, GeneratorExit):
                # The client left (the stream is cancelled): closing the stack stops the generation.
                self.metrics.cancelled.labels(self.route).inc()
                raise
            except (EngineError, ModelNotFound) as exc:
                # Headers are gone; the error travels as an event, as OpenAI and vLLM do.
                api = to_api_error(exc)
                yield {"data": json.dumps(error_body(api.status, api.message, api.param, api.code))}
            except Exception:
                log.exception("stream failed")
                yield {"data": json.dumps(error_body(500, "internal server error", code="internal_error"))}
            finally:
                await stack.aclose()
            yield {"data": "[DONE]"}

        # Also on the background: a client gone before the body starts never runs the finally above.
        return EventSourceResponse(body(), ping=15, sep="\n", background=BackgroundTask(stack.aclose))
