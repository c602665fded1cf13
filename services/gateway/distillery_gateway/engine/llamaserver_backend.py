"""The llamacpp backend's child-process variant: llama.cpp's own `llama-server` on the student's GGUF.

The gateway starts `llama-server` (`scripts/build-llama-server.sh` puts it in the venv) on loopback with
`slots` parallel slots and continuous batching, supervises it (a dead server is started again and the
requests of the moment get 503 + Retry-After), and sends it token-id prompts rendered by the same
`Codec` as every backend, on its native `/completion` endpoint with OpenAI sampling semantics (no
top-k, min-p or repetition penalty unless asked). Requests wait here for a slot, so the queue bound,
the queue deadline and the running/queued gauges mean what they mean on the in-process variant.

llama-server gives no log-probabilities of prompt tokens, so what needs them (`echo` with `logprobs`:
lm-eval's scoring; `/v1/predict`'s fallback of scoring the options) runs on an in-process llama.cpp
context on the same GGUF (llamacpp_backend.py), made on the first such request and kept: the answers
are llama.cpp's either way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import httpx

from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.llamacpp_backend import LlamaCppBackend, LlamaCppOptions, gguf_codec
from distillery_gateway.engine.types import (
    Choice,
    Delta,
    Generation,
    ModelNotReady,
    QueueFull,
    QueueTimeout,
    SamplingParams,
    TokenLogprob,
    UpstreamError,
)

log = logging.getLogger(__name__)

BINARY = "llama-server"
READY_TIMEOUT_S = 300.0
# OpenAI semantics: llama-server's own defaults (top-k 40, min-p 0.05, ...) would change the answers.
NEUTRAL_SAMPLING: dict[str, Any] = {
    "top_k": 0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "dry_multiplier": 0.0,
    "xtc_probability": 0.0,
}


def find_binary(configured: str | None = None) -> str:
    """`configured`, else llama-server beside this Python (the venv's bin), else on PATH."""
    candidates = [configured] if configured else [str(Path(sys.executable).parent / BINARY), BINARY]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise FileNotFoundError(
        f"{candidates[0]} not found: build it with `bash scripts/build-llama-server.sh` "
        "(or set DISTILLERY_LLAMACPP_SERVER_BIN), or use DISTILLERY_LLAMACPP_RUNTIME=inprocess"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServerProcess:
    """One `llama-server` child on a loopback port: started, health-checked, restarted, stopped."""

    def __init__(self, binary: str, gguf: Path, slots: int, ctx_per_slot: int, threads: int, log_path: Path):
        self.binary, self.gguf, self.log_path = binary, gguf, log_path
        self.slots, self.ctx_per_slot, self.threads = slots, ctx_per_slot, threads
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._lock = threading.Lock()
        self.restarts = 0

    def argv(self, port: int) -> list[str]:
        threads = str(self.threads)
        return [
            self.binary,
            "--model", str(self.gguf),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--parallel", str(self.slots),
            "--ctx-size", str(self.slots * self.ctx_per_slot),  # split evenly over the slots
            "--threads", threads,
            "--threads-batch", threads,
            "--cont-batching",
            "--no-webui",
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until /health answers (blocking: call off the event loop)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        port = _free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.argv(port), stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited ({self.proc.returncode}) on start; see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    log.info("llama-server pid %s serves %s on %s", self.proc.pid, self.gguf.name, self.url)
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(
                    f"llama-server not ready after {READY_TIMEOUT_S:.0f} s; see {self.log_path}"
                )
            time.sleep(0.2)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart_if_dead(self) -> bool:
        """Start the server again if it died; whether it had to (blocking)."""
        with self._lock:
            if self.alive:
                return False
            log.warning(
                "llama-server exited (%s); starting it again", self.proc.returncode if self.proc else None
            )
            self.restarts += 1
            self._start()
            return True

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LlamaServerBackend(Backend):
    """A causal student as GGUF on a supervised `llama-server` child with `slots` parallel slots."""

    kind = "llamacpp"

    def __init__(self, path: str | Path, options: LlamaCppOptions, binary: str | None = None):
        self.codec, self.export = gguf_codec(path, options)
        self.path, self.options = path, options
        self.slots, self.queue_size, self.queue_timeout_s = (
            options.slots,
            options.queue_size,
            options.queue_timeout_s,
        )
        self.server = LlamaServerProcess(
            find_binary(binary),
            self.export.gguf,
            options.slots,
            self.codec.max_context,
            options.thread_count,
            Path(options.gguf_dir) / "llama-server.log",
        )
        self.server.start()
        limits = httpx.Limits(max_connections=options.slots, max_keepalive_connections=options.slots)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0), limits=limits)
        self._room = asyncio.Semaphore(options.slots)  # binds to the serving loop on first use
        self._running = 0
        self._waiting = 0
        self._scorer: LlamaCppBackend | None = None  # in-process, made on first use (prompt logprobs)
        self._scorer_lock = asyncio.Lock()

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    # --- requests -------------------------------------------------------------------------------------

    def _body(self, prompt: list[int], params: SamplingParams, seed: int | None, stream: bool) -> dict:
        body: dict[str, Any] = {
            "prompt": prompt,
            "n_predict": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop),
            "seed": -1 if seed is None else seed,
            "return_tokens": True,
            "cache_prompt": True,
            "stream": stream,
            **NEUTRAL_SAMPLING,
        }
        if params.greedy:
            # The argmax is the argmax: keeping one candidate spares every sampler in the chain a pass
            # (and top-p a sort) over the whole vocabulary per token. Logprobs come from the raw logits.
            body["top_k"] = 1
        if params.logprobs is not None:  # the chosen token's logprob comes with at least one alternative
            body["n_probs"] = max(1, params.logprobs)
        return body

    async def scorer(self) -> LlamaCppBackend:
        """The in-process llama.cpp on the same GGUF, for prompt logprobs (made once, off the loop)."""
        async with self._scorer_lock:
            scorer = self._scorer
            if scorer is None:
                log.info("prompt logprobs asked: loading %s in-process for scoring", self.export.gguf.name)
                scorer = self._scorer = await asyncio.to_thread(LlamaCppBackend, self.path, self.options)
            return scorer

    @staticmethod
    def _needs_prompt_logprobs(params: SamplingParams) -> bool:
        return params.echo and params.logprobs is not None

    def _check(self, params: SamplingParams, wanted: int) -> None:
        if self._waiting + wanted > self.queue_size:
            raise QueueFull(f"{self._waiting} requests are waiting for a llama-server slot")

    async def _slot(self) -> None:
        self._waiting += 1
        try:
            if self.queue_timeout_s is None:
                await self._room.acquire()
            else:
                try:
                    await asyncio.wait_for(self._room.acquire(), self.queue_timeout_s)
                except TimeoutError:
                    raise QueueTimeout(
                        f"no llama-server slot within the queue deadline of {self.queue_timeout_s:g} s"
                    ) from None
        finally:
            self._waiting -= 1
        self._running += 1

    def _release(self) -> None:
        self._running -= 1
        self._room.release()

    async def _transport_failed(self, exc: Exception) -> ModelNotReady:
        restarted = await asyncio.to_thread(self.server.restart_if_dead)
        what = "llama-server exited and was started again" if restarted else "llama-server unreachable"
        return ModelNotReady(f"{what} ({type(exc).__name__}); retry shortly")

    @staticmethod
    def _upstream(status: int, text: str) -> UpstreamError:
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text[:500]
        return UpstreamError(f"llama-server: {message}", 400 if status == 400 else 502)

    async def _complete(self, prompt: list[int], params: SamplingParams, seed: int | None) -> dict:
        await self._slot()
        try:
            response = await self.client.post(
                f"{self.server.url}/completion", json=self._body(prompt, params, seed, False)
            )
        except httpx.TransportError as exc:
            raise await self._transport_failed(exc) from None
        finally:
            self._release()
        if response.status_code >= 400:
            raise self._upstream(response.status_code, response.text)
        return response.json()

    def _logprobs(self, entries: list[dict] | None, top: int) -> list[TokenLogprob]:
        out = []
        for entry in entries or []:
            alternatives = {
                self.codec.token_text(alt["id"]): float(alt["logprob"])
                for alt in (entry.get("top_logprobs") or [])[:top]
            }
            out.append(
                TokenLogprob(self.codec.token_text(entry["id"]), float(entry["logprob"]), alternatives)
            )
        return out

    def _choice(self, data: dict, params: SamplingParams) -> Choice:
        reason = "length" if data.get("stop_type") == "limit" else "stop"
        logprobs = None
        if params.logprobs is not None:
            logprobs = self._logprobs(data.get("completion_probabilities"), params.logprobs)
        return Choice(data.get("content", ""), reason, int(data.get("tokens_predicted", 0)), logprobs)

    @staticmethod
    def _seed(params: SamplingParams, index: int) -> int | None:
        return None if params.seed is None else params.seed + index

    async def generate(self, prompt_ids: Seq[int], params: SamplingParams) -> Generation:
        if self._needs_prompt_logprobs(params):
            return await (await self.scorer()).generate(prompt_ids, params)
        self._check(params, params.n)
        prompt = list(prompt_ids)
        results = await asyncio.gather(
            *(self._complete(prompt, params, self._seed(params, i)) for i in range(params.n))
        )
        return Generation([self._choice(data, params) for data in results], len(prompt))

    def stream(self, prompt_ids: Seq[int], params: SamplingParams) -> AsyncIterator[Delta | Generation]:
        if self._needs_prompt_logprobs(params):
            return self._scored_stream(list(prompt_ids), params)
        self._check(params, params.n)  # errors here, before any response is sent
        return self._stream(list(prompt_ids), params)

    async def _scored_stream(
        self, prompt: list[int], params: SamplingParams
    ) -> AsyncIterator[Delta | Generation]:
        async for item in (await self.scorer()).stream(prompt, params):
            yield item

    async def _stream(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[Delta | Generation]:
        queue: asyncio.Queue[Delta | BaseException | tuple[int, Choice]] = asyncio.Queue()

        async def one(index: int) -> None:
            try:
                queue.put_nowait((index, await self._stream_one(prompt, params, index, queue)))
            except BaseException as exc:  # handed to the consumer, which raises it
                queue.put_nowait(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

        tasks = [asyncio.create_task(one(i)) for i in range(params.n)]
        choices: dict[int, Choice] = {}
        try:
            while len(choices) < params.n:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, tuple):
                    choices[item[0]] = item[1]
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()  # a client that left: closing the upstream stream makes llama-server stop
        yield Generation([choices[i] for i in range(params.n)], len(prompt))

    async def _stream_one(
        self, prompt: list[int], params: SamplingParams, index: int, queue: asyncio.Queue
    ) -> Choice:
        await self._slot()
        pieces: list[str] = []
        final: dict = {}
        probs: list[dict] = []
        try:
            body = self._body(prompt, params, self._seed(params, index), True)
            async with self.client.stream("POST", f"{self.server.url}/completion", json=body) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode("utf-8", "replace")
                    raise self._upstream(response.status_code, text)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        raise self._upstream(502, json.dumps(chunk))
                    probs.extend(chunk.get("completion_probabilities") or [])
                    if chunk.get("stop"):
                        final = chunk
                        break
                    if chunk.get("content"):
                        pieces.append(chunk["content"])
                        queue.put_nowait(Delta(index, chunk["content"]))
        except httpx.TransportError as exc:
            raise await self._transport_failed(exc) from None
        finally:
            self._release()
        last = final.get("content") or ""
        choice = self._choice(
            {**final, "content": "".join(pieces) + last, "completion_probabilities": probs}, params
        )
        queue.put_nowait(Delta(index, last, choice.finish_reason))
        return choice

    async def score(self, prompt_ids: Seq[int], continuations: Seq[Seq[int]]) -> list[list[float]]:
        return await (await self.scorer()).score(prompt_ids, continuations)

    async def aclose(self) -> None:
        await self.client.aclose()
        await asyncio.to_thread(self.server.stop)
        if self._scorer is not None:
            await self._scorer.aclose()
