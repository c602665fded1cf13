"""vLLM backend: the gateway renders prompts to token ids and forwards them to a vLLM OpenAI server.

Sending token ids (not text) makes vLLM see exactly what the in-process backend would, and lets
`/v1/predict` score options through `echo` + `logprobs`. vLLM batches on its own (continuous
batching), so here a bounded in-flight count gives the same back-pressure as the local queue.

A promoted model the server does not list but that is a LoRA student (its distillery_student.json names a
`lora_adapter`, see distillery.distill.export) is loaded into the running server at `connect()`
(`POST /v1/load_lora_adapter`: vLLM started with `--enable-lora` and
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) under the model's version id, and every request names that
adapter. Closing the backend (after a swap, once its last request ended) unloads it again.

Full-weight students go blue/green instead (DISTILLERY_VLLM_URL_TEMPLATE): each registry version has its
own vLLM server (`version_url`), started by the operator (scripts/vllm-bluegreen.sh). `connect()` then
waits, up to `ready_timeout_s`, until that server answers and lists the model; the manager's swap is the
switch, and the old server is retired by the operator once the gateway serves the new version.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

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

LOAD_TIMEOUT_S = 300.0  # loading an adapter onto the GPU(s)
RUNTIME_LORA = (
    "the vLLM server must run with --enable-lora (and --max-lora-rank at least the adapter's r) and "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and see the adapter at that path "
    "(DISTILLERY_VLLM_LORA_ROOT: where it mounts this gateway's DISTILLERY_HOME)"
)


def version_url(template: str, name: str, version: int) -> str:
    """The vLLM URL of one registry version: `template` with `{version}` and `{name}` (as a DNS label)."""
    if "{version}" not in template:
        raise ValueError(f"DISTILLERY_VLLM_URL_TEMPLATE ({template}) must contain {{version}}")
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-") or "student"
    try:
        return template.format(version=version, name=slug)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"DISTILLERY_VLLM_URL_TEMPLATE ({template}) may only use {{version}} and {{name}}: {exc!r}"
        ) from None


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
    # (server, adapter name) -> how many backends of this process route to that runtime-loaded adapter:
    # the last one to close unloads it (a re-promotion of the serving version must not unload it).
    _adapter_users: ClassVar[dict[tuple[str, str], int]] = {}
    _adapter_lock: ClassVar[threading.Lock] = threading.Lock()
    ready_poll_s: ClassVar[float] = 1.0  # how often connect() asks a per-version server for its models

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
        lora_name: str | None = None,
        lora_root: str | None = None,
        home: str | Path | None = None,
        ready_timeout_s: float | None = None,
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
        # The name a LoRA student's adapter is loaded under: stable per model version (the registry's id).
        self.lora_name = lora_name or next(
            (c for c in self.candidates if c != self.path), Path(self.path).name
        )
        if lora_root and home is None:
            raise ValueError("lora_root maps the gateway's home directory: pass home too")
        self.lora_root = lora_root
        self.home = Path(home) if home is not None else None
        self.holds_adapter = False  # this backend routes to an adapter loaded at runtime (unload on close)
        # Set for a server of this version only (blue/green): connect() waits for it to list the model.
        self.ready_timeout_s = ready_timeout_s

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
        to a model vLLM does not serve yet fails and leaves the current one serving. A LoRA student
        the server does not list yet is loaded into it here. A server of this version only
        (`ready_timeout_s` set) is waited for instead, and serves full weights: no adapter is loaded."""
        if self.ready_timeout_s is not None:
            self._wait_listed(self.ready_timeout_s)
            return
        if self.upstream_model:
            return
        models = self._served_models()
        served = [m["id"] for m in models]
        adapter = self.lora_adapter()
        for name in self.candidates:
            if name in served:
                self.upstream_model = name
                if adapter is not None and name == self.lora_name:
                    self._hold_adapter()  # loaded already (by another replica, or our previous backend)
                return
        if adapter is not None:
            self._load_adapter(models, *adapter)
            return
        if len(served) == 1:
            self.upstream_model = served[0]
            return
        raise UpstreamError(
            f"the vLLM server at {self.base_url} serves {served}, none of {list(self.candidates)}, and "
            f"{self.path} has no LoRA adapter to load into it: serve the model on the vLLM server, or train "
            "it with LoRA (its adapter is then loaded at runtime)",
            503,
        )

    def _wait_listed(self, timeout_s: float) -> None:
        """Poll GET /models until the server answers and lists our model (a candidate, or its only model;
        the configured upstream name if there is one), else UpstreamError after `timeout_s`."""
        wanted = (self.upstream_model,) if self.upstream_model else self.candidates
        deadline = time.monotonic() + timeout_s
        log.info(
            "waiting up to %.0fs for the vLLM server at %s to list %s", timeout_s, self.base_url, wanted[0]
        )
        last = "no answer yet"
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = self._sync("GET", "/models", timeout=min(10.0, max(remaining, 1.0)))
                if response.status_code >= 400:
                    last = f"GET /models answered {response.status_code}"
                else:
                    served = [str(m.get("id")) for m in response.json().get("data", [])]
                    picked = next((n for n in wanted if n in served), None)
                    if picked is None and not self.upstream_model and len(served) == 1:
                        picked = served[0]  # a server of this version only: its one model is ours
                    if picked is not None:
                        self.upstream_model = picked
                        log.info("the vLLM server at %s serves %s", self.base_url, picked)
                        return
                    last = f"it serves {served}"
            except UpstreamError as exc:
                last = str(exc)
            except (ValueError, AttributeError, TypeError) as exc:
                last = f"GET /models answered no model list ({type(exc).__name__})"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamError(
                    f"the vLLM server at {self.base_url} did not answer GET /models listing "
                    f"{' or '.join(wanted)} within {timeout_s:g}s (DISTILLERY_VLLM_READY_TIMEOUT_S; last: "
                    f"{last}): start this version's server (scripts/vllm-bluegreen.sh); the load is retried "
                    "a minute later",
                    503,
                )
            time.sleep(min(self.ready_poll_s, remaining))

    # --- LoRA students loaded at runtime ------------------------------------------------------------

    def lora_adapter(self) -> tuple[Path, str | None] | None:
        """The unmerged adapter saved beside a LoRA student and the base it was trained on, else None."""
        entry = self.codec.student_info.get("lora_adapter")
        if not isinstance(entry, dict) or not entry.get("path"):
            return None
        local = Path(self.path) / str(entry["path"])
        if not (local / "adapter_config.json").is_file():
            log.warning("%s names a LoRA adapter at %s, which has no adapter_config.json", self.path, local)
            return None
        base = entry.get("base_model")
        return local, str(base) if base else None

    def server_path(self, local: Path) -> str:
        """Where the vLLM server sees `local`: the same path, or under `lora_root` (its mount of our home)."""
        if not self.lora_root:
            return str(local)
        assert self.home is not None
        try:
            relative = local.resolve().relative_to(self.home.resolve())
        except ValueError:
            raise UpstreamError(
                f"{local} is not under DISTILLERY_HOME ({self.home}), so it has no path under "
                f"DISTILLERY_VLLM_LORA_ROOT ({self.lora_root}) on the vLLM server",
                503,
            ) from None
        return str(PurePosixPath(self.lora_root) / relative.as_posix())

    def _sync(self, method: str, url: str, timeout: float = 30.0, **kwargs: Any) -> httpx.Response:
        try:
            return httpx.request(
                method, f"{self.base_url}{url}", headers=self.client.headers, timeout=timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(f"vLLM server at {self.base_url} unreachable: {type(exc).__name__}") from exc

    def _served_models(self) -> list[dict[str, Any]]:
        response = self._sync("GET", "/models")
        if response.status_code >= 400:
            raise UpstreamError(
                f"vLLM server at {self.base_url}: GET /models answered {response.status_code}"
            )
        return list(response.json().get("data", []))

    def _load_adapter(self, models: list[dict[str, Any]], local: Path, base: str | None) -> None:
        bases = [m["id"] for m in models if not m.get("parent")]  # vLLM lists adapters with their parent
        config = json.loads((local / "adapter_config.json").read_text())
        wanted = {b for b in (base, config.get("base_model_name_or_path")) if b}
        wanted |= {PurePosixPath(b).name for b in wanted}
        if not wanted & set(bases) and len(bases) != 1:
            raise UpstreamError(
                f"{self.path} is a LoRA adapter of {base}, but the vLLM server at {self.base_url} serves "
                f"{bases}: serve {base} there (with --enable-lora), or serve the merged model itself",
                503,
            )
        lora_path = self.server_path(local)
        body = {"lora_name": self.lora_name, "lora_path": lora_path}
        response = self._sync("POST", "/load_lora_adapter", timeout=LOAD_TIMEOUT_S, json=body)
        already = response.status_code == 400 and "already" in response.text.lower()
        if response.status_code >= 400 and not already:
            raise UpstreamError(
                f"the vLLM server at {self.base_url} did not load the LoRA adapter {lora_path} as "
                f"{self.lora_name} ({response.status_code}: {self._error(400, response.text)}); "
                f"{RUNTIME_LORA}",
                503,
            )
        self._hold_adapter()
        served = [m["id"] for m in self._served_models()]
        if self.lora_name not in served:
            self._release_adapter_sync()
            raise UpstreamError(
                f"the vLLM server at {self.base_url} loaded the LoRA adapter {lora_path} but does not list "
                f"{self.lora_name} (it serves {served})",
                503,
            )
        log.info("loaded LoRA adapter %s from %s into %s", self.lora_name, lora_path, self.base_url)
        self.upstream_model = self.lora_name

    def _hold_adapter(self) -> None:
        with self._adapter_lock:
            key = (self.base_url, self.lora_name)
            self._adapter_users[key] = self._adapter_users.get(key, 0) + 1
        self.holds_adapter = True

    def _release_adapter(self) -> bool:
        """Stop holding the adapter; True when no other backend of this process routes to it."""
        if not self.holds_adapter:
            return False
        self.holds_adapter = False
        with self._adapter_lock:
            key = (self.base_url, self.lora_name)
            left = self._adapter_users.get(key, 1) - 1
            if left > 0:
                self._adapter_users[key] = left
                return False
            self._adapter_users.pop(key, None)
            return True

    def _release_adapter_sync(self) -> None:
        if self._release_adapter():
            try:
                self._sync("POST", "/unload_lora_adapter", json={"lora_name": self.lora_name})
            except UpstreamError as exc:
                log.warning("unloading LoRA adapter %s failed: %s", self.lora_name, exc)

    async def _unload_adapter(self) -> None:
        """Unload our adapter from the server; failures are logged (the server may be gone already)."""
        try:
            response = await self.client.post("/unload_lora_adapter", json={"lora_name": self.lora_name})
        except httpx.HTTPError as exc:
            log.warning("unloading LoRA adapter %s failed: %s", self.lora_name, type(exc).__name__)
            return
        if response.status_code >= 400:
            log.warning(
                "unloading LoRA adapter %s failed: %s %s",
                self.lora_name,
                response.status_code,
                response.text[:300],
            )
        else:
            log.info("unloaded LoRA adapter %s from %s", self.lora_name, self.base_url)

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
        try:
            if self._release_adapter():
                await self._unload_adapter()
        except Exception:
            log.exception("unloading LoRA adapter %s failed", self.lora_name)
        finally:
            await self.client.aclose()
