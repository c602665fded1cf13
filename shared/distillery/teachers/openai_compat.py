"""Teachers behind an OpenAI-compatible server (vLLM, llama.cpp, TGI's Messages API, hosted APIs).

`api_style` picks the endpoint: `chat` sends the few-shot chat rendering to /v1/chat/completions (the
server applies the model's chat template); `completion` sends the plain prompt to /v1/completions, for
base models without a chat template. No retries here: the caller (a Celery task) owns retry policy.
The requests are plain JSON over one pooled aiohttp session (openai_http.py), not the `openai` SDK.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import aiohttp

from distillery.rationales.prompts import TEMPLATE_VERSION, get_template, teacher_messages, teacher_prompt
from distillery.records import Demonstration, Example
from distillery.teachers.base import Generation, GenerationParams, TeacherError, TeacherSpec
from distillery.teachers.openai_http import JsonClient, MalformedResponse, StatusError

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
    """HTTP/transport error -> TeacherError; transport, timeouts, 429 and 5xx are retryable."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return TeacherError(f"teacher {teacher!r}: request timed out", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | ConnectionError):
        return TeacherError(f"teacher {teacher!r}: cannot reach server ({exc})", retryable=True)
    if isinstance(exc, StatusError):
        status = exc.status
        retryable = status >= 500 or status in RETRYABLE_STATUS
        return TeacherError(f"teacher {teacher!r}: HTTP {status}: {exc.message}", retryable=retryable)
    return TeacherError(f"teacher {teacher!r}: {type(exc).__name__}: {exc}", retryable=False)


class OpenAICompatTeacher:
    """A TeacherClient over an OpenAI-compatible HTTP API; `spec.max_concurrency` calls in flight at most."""

    def __init__(self, spec: TeacherSpec, client: JsonClient | None = None):
        if not spec.base_url:
            raise ValueError(
                f"teacher {spec.name!r}: backend 'openai' needs a base_url (e.g. http://host:8000/v1)"
            )
        if not spec.model:
            raise ValueError(f"teacher {spec.name!r}: backend 'openai' needs the served model name (model)")
        self.spec = spec
        self.template_version = spec.template_version or TEMPLATE_VERSION
        self._client = client or JsonClient(
            spec.base_url, api_key_for(spec), spec.timeout_s, max_connections=spec.max_concurrency
        )
        self._slots = asyncio.Semaphore(spec.max_concurrency)

    def _request(
        self, example: Example, demonstrations: list[Demonstration], params: GenerationParams
    ) -> tuple[str, dict[str, Any]]:
        """The endpoint and the JSON body of the call."""
        body: dict[str, Any] = {
            "model": self.spec.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self.spec.api_style == "chat":
            if params.stop is not None:
                body["stop"] = params.stop
            body["messages"] = teacher_messages(example, demonstrations, self.template_version)
            return "/chat/completions", body
        body["prompt"] = teacher_prompt(example, demonstrations, self.template_version)
        body["stop"] = completion_stops(params, self.template_version)
        return "/completions", body

    def _parse(self, data: dict[str, Any], latency_ms: float) -> Generation:
        """The Generation in a (chat) completion response."""
        choices = data.get("choices")
        if not choices:
            raise TeacherError(f"teacher {self.spec.name!r}: response holds no choices", retryable=True)
        choice = choices[0]
        if self.spec.api_style == "chat":
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text")
        if not isinstance(text, str):
            raise TeacherError(f"teacher {self.spec.name!r}: response choice holds no text", retryable=True)
        usage = data.get("usage") or {}
        return Generation(
            text=text.strip(),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency_ms,
            extra={"model": data.get("model"), "template_version": self.template_version},
        )

    async def generate(
        self, example: Example, demonstrations: list[Demonstration], params: GenerationParams
    ) -> Generation:
        """One rationale for `example`, prompted with its gold answer and the demonstrations."""
        path, body = self._request(example, demonstrations, params)
        async with self._slots:
            started = time.perf_counter()
            try:
                # One deadline for the whole call: httpx's timeouts are per phase (connect, each read),
                # so a server that drips a byte at a time would otherwise hold the call forever.
                async with asyncio.timeout(self.spec.timeout_s):
                    data = await self._client.post(path, body)
            except Exception as exc:  # every failure leaves as a TeacherError the caller can classify
                raise map_error(exc, self.spec.name) from exc
            latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            return self._parse(data, latency_ms)
        except (AttributeError, TypeError) as exc:  # a choice or usage that is not an object
            raise map_error(MalformedResponse(f"unexpected response shape ({exc})"), self.spec.name) from exc

    async def aclose(self) -> None:
        await self._client.aclose()
