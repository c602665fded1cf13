"""Teachers behind Text Generation Inference's native protocol, through huggingface_hub's client.

TGI's /generate takes a raw prompt, so this backend always sends the plain-completion rendering
(`api_style` is ignored; for a chat model behind TGI use backend `openai` against TGI's Messages API).
`details=True` gives the finish reason and the generated-token count; TGI reports prompt tokens only
with decoder-input details, which cost a logit row per prompt token, so prompt_tokens stays unknown.
"""

from __future__ import annotations

import asyncio
import time
from types import ModuleType
from typing import Any

import httpx
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import (
    GenerationError,
    HfHubHTTPError,
    IncompleteGenerationError,
    InferenceTimeoutError,
    OverloadedError,
    TextGenerationError,
)

from distillery.rationales.prompts import TEMPLATE_VERSION, teacher_prompt
from distillery.records import Demonstration, Example
from distillery.teachers.base import Generation, GenerationParams, TeacherError, TeacherSpec
from distillery.teachers.openai_compat import RETRYABLE_STATUS, api_key_for, completion_stops

hub_httpx: ModuleType
try:  # the HTTP library huggingface_hub 2.x is built on; 1.x used httpx itself
    import httpx2 as hub_httpx
except ImportError:  # pragma: no cover
    hub_httpx = httpx
try:  # reads an error body before the client raises, so TGI's error_type can be parsed
    from huggingface_hub.utils._http import async_hf_response_event_hook as read_error_body
except ImportError:  # pragma: no cover
    read_error_body = None

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, hub_httpx.TransportError)

# TGI's finish reasons in the OpenAI vocabulary the rest of the system (and is_truncated) speaks.
FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


def _status(exc: BaseException) -> int | None:
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def map_error(exc: Exception, teacher: str) -> TeacherError:
    """huggingface_hub/transport error -> TeacherError; overload, timeouts, transport, 429 and 5xx retry."""
    if isinstance(exc, InferenceTimeoutError | asyncio.TimeoutError | TimeoutError):
        return TeacherError(f"teacher {teacher!r}: request timed out", retryable=True)
    if isinstance(exc, OverloadedError | GenerationError | IncompleteGenerationError):
        return TeacherError(f"teacher {teacher!r}: {type(exc).__name__}: {exc}", retryable=True)
    if isinstance(exc, TextGenerationError | HfHubHTTPError):
        status = _status(exc)
        retryable = status is not None and (status >= 500 or status in RETRYABLE_STATUS)
        shown = f"HTTP {status}" if status is not None else type(exc).__name__
        return TeacherError(f"teacher {teacher!r}: {shown}: {exc}", retryable=retryable)
    if isinstance(exc, (*_TRANSPORT_ERRORS, ConnectionError)):
        return TeacherError(f"teacher {teacher!r}: cannot reach server ({exc})", retryable=True)
    return TeacherError(f"teacher {teacher!r}: {type(exc).__name__}: {exc}", retryable=False)


# huggingface_hub is not followed by mypy (pyproject.toml), so its client class is Any to it.
class EndpointInferenceClient(AsyncInferenceClient):  # type: ignore[misc]
    """AsyncInferenceClient for a self-hosted endpoint.

    huggingface_hub's default session refuses every request while HF_HUB_OFFLINE=1, which distillery
    always sets so that no weights come from the Hub. That guard is about the Hub; a TGI server of our
    own must stay reachable, so this client's session has no offline hook (it keeps the error hook).
    """

    _async_client: Any  # the base class sets it to None; the session once a request made it

    async def _get_async_client(self) -> Any:  # the hub's session type: httpx2 (2.x) or httpx (1.x)
        if self._async_client is None:
            hooks = {"response": [read_error_body]} if read_error_body else {}
            session = hub_httpx.AsyncClient(event_hooks=hooks, follow_redirects=True, timeout=None)
            self._async_client = await self.exit_stack.enter_async_context(session)
        return self._async_client


class TGITeacher:
    """A TeacherClient over `huggingface_hub.AsyncInferenceClient.text_generation(details=True)`."""

    def __init__(self, spec: TeacherSpec, client: AsyncInferenceClient | None = None):
        if not spec.base_url:
            raise ValueError(f"teacher {spec.name!r}: backend 'tgi' needs a base_url (e.g. http://host:8080)")
        self.spec = spec
        self.template_version = spec.template_version or TEMPLATE_VERSION
        key = api_key_for(spec)
        self._client = client or EndpointInferenceClient(
            model=spec.base_url.rstrip("/"),
            timeout=spec.timeout_s,
            headers={"Authorization": f"Bearer {key}"} if key != "EMPTY" else None,
        )
        self._slots = asyncio.Semaphore(spec.max_concurrency)

    async def generate(
        self, example: Example, demonstrations: list[Demonstration], params: GenerationParams
    ) -> Generation:
        """One rationale for `example` from TGI's /generate."""
        prompt = teacher_prompt(example, demonstrations, self.template_version)
        kwargs: dict[str, Any] = {
            "details": True,
            "max_new_tokens": params.max_tokens,
            "stop": completion_stops(params, self.template_version),
            "return_full_text": False,
        }
        # TGI rejects temperature 0; greedy decoding is do_sample=False.
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=min(params.top_p, 0.999))
        else:
            kwargs["do_sample"] = False
        if params.seed is not None:
            kwargs["seed"] = params.seed
        async with self._slots:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.spec.timeout_s):  # the whole call, not each read
                    output = await self._client.text_generation(prompt, **kwargs)
            except Exception as exc:  # every failure leaves as a TeacherError the caller can classify
                raise map_error(exc, self.spec.name) from exc
            latency_ms = (time.perf_counter() - started) * 1000.0
        details = getattr(output, "details", None)
        if details is None:
            raise TeacherError(
                f"teacher {self.spec.name!r}: server returned no generation details (is it TGI?)",
                retryable=False,
            )
        text = output.generated_text
        for stop in kwargs["stop"]:  # TGI keeps the matched stop sequence at the end of the text
            if text.endswith(stop):
                text = text[: -len(stop)]
                break
        return Generation(
            text=text.strip(),
            finish_reason=FINISH_REASONS.get(str(details.finish_reason), str(details.finish_reason)),
            prompt_tokens=len(details.prefill) if details.prefill else None,
            completion_tokens=details.generated_tokens,
            latency_ms=latency_ms,
            extra={"template_version": self.template_version, "seed": details.seed},
        )

    async def aclose(self) -> None:
        await self._client.close()
