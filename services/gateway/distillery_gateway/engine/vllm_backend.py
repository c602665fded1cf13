"""vLLM backend: the gateway renders prompts to token ids and forwards them to a vLLM OpenAI server.

Sending token ids (not text) makes vLLM see exactly what the in-process backend would, and lets
`/v1/predict` score options through `echo` + `logprobs`. vLLM batches on its own (continuous
batching), so here a bounded in-flight count gives the same back-pressure as the local queue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.codec import Codec
from distillery_gateway.engine.types import (
    Choice,
    Delta,
    Generation,
    QueueFull,
    SamplingParams,
    TokenLogprob,
    UpstreamError,
)

log = logging.getLogger(__name__)


def _logprobs(block: dict[str, Any] | None, skip: int = 0) -> list[TokenLogprob] | None:
    if not block:
        return None
    tokens = block.get("tokens") or []
    values = block.get("token_logprobs") or []
    tops = block.get("top_logprobs") or [None] * len(tokens)
    return [
        TokenLogprob(t, v, dict(top or {}))
        for t, v, top in list(zip(tokens, values, tops, strict=False))[skip:]
    ]


class VLLMBackend(Backend):
    """Forwards token-id prompts to `base_url` (a vLLM `/v1`), which serves the promoted model."""

    kind = "vllm"

    def __init__(
        self,
        base_url: str,
        path: str | Path,
        upstream_model: str | None = None,
        *,
        candidates: Sequence[str] = (),
        max_in_flight: int = 256,
        timeout_s: float = 600.0,
        api_key: str | None = None,
    ):
        self.codec = Codec(path)
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=headers)
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.path = str(path)
        self.upstream_model = upstream_model
        self.candidates = tuple(candidates) or (self.path,)

    @property
    def queue_depth(self) -> int:
        return self.in_flight

    def _pick(self, served: list[str], candidates: Sequence[str]) -> str:
        for name in candidates:
            if name in served:
                return name
        if len(served) == 1:
            return served[0]
        raise UpstreamError(f"the vLLM server serves {served}, none of {list(candidates)}", 503)

    def connect(self) -> None:
        """Check (blocking, at load time) that the server is up and serves our model, so that a swap
        to a model vLLM does not serve yet fails and leaves the current one serving."""
        if self.upstream_model:
            return
        try:
            response = httpx.get(f"{self.base_url}/models", headers=self.client.headers, timeout=30)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"vLLM server at {self.base_url} unreachable: {type(exc).__name__}") from exc
        self.upstream_model = self._pick([m["id"] for m in response.json().get("data", [])], self.candidates)

    async def resolve_upstream_model(self, candidates: Sequence[str]) -> str:
        """The upstream's name for our model: the first candidate it serves, else its only model."""
        if self.upstream_model:
            return self.upstream_model
        response = await self._request("GET", "/models")
        self.upstream_model = self._pick([m["id"] for m in response.json().get("data", [])], candidates)
        return self.upstream_model

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"vLLM server unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise self._error(response.status_code, response.text)
        return response

    @staticmethod
    def _error(status: int, body: str) -> UpstreamError:
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:500]
        # The client's own mistakes stay 4xx; anything else is the upstream's failure.
        return UpstreamError(f"vLLM: {message}", status if 400 <= status < 500 and status != 429 else 502)

    def _body(self, prompt_ids: Sequence[int], params: SamplingParams, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "prompt": list(prompt_ids),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
            "stream": stream,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
            body["echo"] = params.echo
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _enter(self) -> None:
        if self.in_flight >= self.max_in_flight:
            raise QueueFull(f"{self.max_in_flight} requests already in flight to the vLLM server")
        self.in_flight += 1

    async def _ready(self) -> None:
        if not self.upstream_model:
            await self.resolve_upstream_model(self.candidates)

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        await self._ready()
        self._enter()
        try:
            response = await self._request("POST", "/completions", json=self._body(prompt_ids, params, False))
        finally:
            self.in_flight -= 1
        data = response.json()
        n_prompt = len(prompt_ids)
        choices, prompt_logprobs = [], None
        for c in sorted(data["choices"], key=lambda c: c["index"]):
            lps = _logprobs(c.get("logprobs"))
            text = c.get("text") or ""
            if params.echo and lps is not None:
                prompt_logprobs, lps = lps[:n_prompt], lps[n_prompt:]
                echoed = self.codec.decode(prompt_ids, skip_special_tokens=False)
                text = text[len(echoed) :] if text.startswith(echoed) else "".join(lp.token for lp in lps)
            tokens = (
                len(lps)
                if lps is not None
                else len(self.codec.tokenizer(text, add_special_tokens=False)["input_ids"])
            )
            choices.append(Choice(text, c.get("finish_reason") or "stop", tokens, lps))
        usage = data.get("usage") or {}
        completion = usage.get("completion_tokens")
        if completion is not None and choices and sum(c.num_tokens for c in choices) != completion:
            # Trust the server's count (it knows about end-of-sequence tokens we never see as text).
            per, rest = divmod(completion, len(choices))
            for i, choice in enumerate(choices):
                choice.num_tokens = per + (1 if i < rest else 0)
        return Generation(choices, usage.get("prompt_tokens", n_prompt), prompt_logprobs)

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams) -> AsyncIterator[Delta | Generation]:
        if self.in_flight >= self.max_in_flight:
            raise QueueFull(f"{self.max_in_flight} requests already in flight to the vLLM server")
        return self._stream(prompt_ids, params)

    async def _stream(
        self, prompt_ids: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[Delta | Generation]:
        await self._ready()
        self._enter()
        texts = [""] * params.n
        reasons: list[str] = ["length"] * params.n
        usage: dict[str, int] = {}
        try:
            async with self.client.stream(
                "POST", "/completions", json=self._body(prompt_ids, params, True)
            ) as response:
                if response.status_code >= 400:
                    raise self._error(response.status_code, (await response.aread()).decode(errors="replace"))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if chunk.get("error"):
                        raise UpstreamError(f"vLLM: {chunk['error'].get('message')}")
                    usage = chunk.get("usage") or usage
                    for c in chunk.get("choices", []):
                        i, piece, reason = c["index"], c.get("text") or "", c.get("finish_reason")
                        texts[i] += piece
                        if reason:
                            reasons[i] = reason
                        if piece or reason:
                            yield Delta(i, piece, reason)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"vLLM server unreachable: {type(exc).__name__}") from exc
        finally:
            self.in_flight -= 1
        completion = usage.get("completion_tokens", 0)
        per, rest = divmod(completion, params.n)
        choices = [
            Choice(t, r, per + (1 if i < rest else 0))
            for i, (t, r) in enumerate(zip(texts, reasons, strict=False))
        ]
        yield Generation(choices, usage.get("prompt_tokens", len(prompt_ids)))

    async def score(
        self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        await self._ready()
        results = []
        for cont in continuations:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=0, echo=True)
            generation = await self.generate([*prompt_ids, *cont], params)
            lps = generation.prompt_logprobs or []
            results.append([lp.logprob or 0.0 for lp in lps[len(prompt_ids) : len(prompt_ids) + len(cont)]])
        return results

    async def aclose(self) -> None:
        await self.client.aclose()
