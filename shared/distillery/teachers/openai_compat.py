"""Teachers behind an OpenAI-compatible server (vLLM, llama.cpp, TGI's Messages API, hosted APIs).

`api_style` picks the endpoint: `chat` sends the few-shot chat rendering to /v1/chat/completions (the
server applies the model's chat template); `completion` sends the plain prompt to /v1/completions, for
base models without a chat template. No retries here: the caller (a Celery task) owns retry policy.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI

from distillery.rationales.prompts import TEMPLATE_VERSION, get_template, teacher_messages, teacher_prompt
from distillery.records import Demonstration, Example
from distillery.teachers.base import Generation, GenerationParams, TeacherError, TeacherSpec

# Statuses worth another try later: timeouts, lock contention, rate limits (5xx are handled apart).
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


def api_key_for(spec: TeacherSpec) -> str:
    """The key sent to the teacher server: `DISTILLERY_TEACHER_API_KEY_<NAME>`, then a shared one.

    Keys live in the environment, never in the teacher table. Servers without auth ignore the value.
    """
    own = "DISTILLERY_TEACHER_API_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", spec.name).upper()
    return os.environ.get(own) or os.environ.get("DISTILLERY_TEACHER_API_KEY") or "EMPTY"


def completion_stops(params: GenerationParams, version: str) -> list[str]:
    """Stop strings for plain-completion prompts: a base model runs on into an invented next question."""
    if params.stop is not None:
        return params.stop
    label = get_template(version).question_label
    return [f"\n\n{label}", f"\n{label}"]


def map_error(exc: Exception, teacher: str) -> TeacherError:
    """OpenAI SDK/transport error -> TeacherError; transport, timeouts, 429 and 5xx are retryable."""
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | asyncio.TimeoutError):
        return TeacherError(f"teacher {teacher!r}: request timed out", retryable=True)
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
        return TeacherError(f"teacher {teacher!r}: cannot reach server ({exc})", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status >= 500 or status in RETRYABLE_STATUS
        return TeacherError(f"teacher {teacher!r}: HTTP {status}: {exc.message}", retryable=retryable)
    return TeacherError(f"teacher {teacher!r}: {type(exc).__name__}: {exc}", retryable=False)


class OpenAICompatTeacher:
    """A TeacherClient over the `openai` SDK; at most `spec.max_concurrency` requests in flight."""

    def __init__(self, spec: TeacherSpec, client: AsyncOpenAI | None = None):
        if not spec.base_url:
            raise ValueError(
                f"teacher {spec.name!r}: backend 'openai' needs a base_url (e.g. http://host:8000/v1)"
            )
        if not spec.model:
            raise ValueError(f"teacher {spec.name!r}: backend 'openai' needs the served model name (model)")
        self.spec = spec
        self.template_version = spec.template_version or TEMPLATE_VERSION
        self._client = client or AsyncOpenAI(
            base_url=spec.base_url,
            api_key=api_key_for(spec),
            timeout=spec.timeout_s,
            max_retries=0,
            http_client=httpx.AsyncClient(
                timeout=spec.timeout_s,
                limits=httpx.Limits(
                    max_connections=spec.max_concurrency, max_keepalive_connections=spec.max_concurrency
                ),
            ),
        )
        self._slots = asyncio.Semaphore(spec.max_concurrency)

    def _common(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.spec.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        return kwargs

    async def generate(
        self, example: Example, demonstrations: list[Demonstration], params: GenerationParams
    ) -> Generation:
        """One rationale for `example`, prompted with its gold answer and the demonstrations."""
        kwargs = self._common(params)
        async with self._slots:
            started = time.perf_counter()
            try:
                if self.spec.api_style == "chat":
                    if params.stop is not None:
                        kwargs["stop"] = params.stop
                    messages = teacher_messages(example, demonstrations, self.template_version)
                    response = await self._client.chat.completions.create(messages=messages, **kwargs)
                    choice = response.choices[0] if response.choices else None
                    text = (choice.message.content or "") if choice else None
                else:
                    prompt = teacher_prompt(example, demonstrations, self.template_version)
                    kwargs["stop"] = completion_stops(params, self.template_version)
                    response = await self._client.completions.create(prompt=prompt, **kwargs)
                    choice = response.choices[0] if response.choices else None
                    text = choice.text if choice else None
            except Exception as exc:  # every failure leaves as a TeacherError the caller can classify
                raise map_error(exc, self.spec.name) from exc
            latency_ms = (time.perf_counter() - started) * 1000.0
        if choice is None or text is None:
            raise TeacherError(f"teacher {self.spec.name!r}: response holds no choices", retryable=True)
        usage = response.usage
        return Generation(
            text=text.strip(),
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=latency_ms,
            extra={"model": response.model, "template_version": self.template_version},
        )

    async def aclose(self) -> None:
        await self._client.close()
