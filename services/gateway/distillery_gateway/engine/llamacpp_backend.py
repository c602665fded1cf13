"""The `llamacpp` student backend: the promoted student's GGUF, served by llama.cpp in this process.

Loading exports the HF directory to GGUF once (cached under `gguf_dir`; the manager builds backends
on a worker thread, so a promote keeps the old model serving until this is done). Prompts arrive as
token ids from the HF tokenizer (`Codec`), the same ids the other backends get, and go straight into
llama.cpp; every choice is one sequence of the continuous-batching engine.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillery.export import GGUFExport, cached_export
from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.codec import Codec
from distillery_gateway.engine.llamacpp_engine import EngineClosed, LlamaCppEngine, Sequence
from distillery_gateway.engine.sampling import Sampler, log_softmax, top_alternatives
from distillery_gateway.engine.streams import END, QueuedStream
from distillery_gateway.engine.text import IncrementalText, cut_at_stop
from distillery_gateway.engine.types import (
    Choice,
    Delta,
    Generation,
    ModelNotReady,
    QueueFull,
    SamplingParams,
    TokenLogprob,
)

Sink = Callable[[Delta], None]


class _ChoiceRun:
    """One choice being generated: its tokens, text, stop strings, logprobs and streamed deltas."""

    def __init__(self, codec: Codec, eos: set[int], index: int, params: SamplingParams, sink: Sink | None):
        self.codec, self.eos, self.index, self.params, self.sink = codec, eos, index, params, sink
        self.text = IncrementalText(codec, params.stop)
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.reason = "length"
        self.ended_by_eos = False

    def on_token(self, token: int, logits: np.ndarray) -> bool:
        if self.logprobs is not None:
            self.logprobs.append(
                token_logprob(self.codec, log_softmax(logits), token, self.params.logprobs or 0)
            )
        if token in self.eos:
            self.reason, self.ended_by_eos = "stop", True
            return True
        self.ids.append(token)
        piece = self.text.push(token)
        if piece and self.sink is not None:
            self.sink(Delta(self.index, piece))
        if self.text.stopped:
            self.reason = "stop"
        return self.text.stopped

    def choice(self) -> Choice:
        text, _ = cut_at_stop(self.codec.decode(self.ids), self.params.stop)
        if self.sink is not None:
            self.sink(Delta(self.index, self.text.finish(text), self.reason))
        return Choice(text, self.reason, len(self.ids) + self.ended_by_eos, self.logprobs)


def _cancel(seqs: list[Sequence]) -> None:
    for seq in seqs:
        seq.cancelled = True


def token_logprob(codec: Codec, logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    alternatives = {codec.token_text(t): v for t, v in top_alternatives(logprobs, top)}
    return TokenLogprob(codec.token_text(token), float(logprobs[token]), alternatives)


@dataclass(frozen=True)
class LlamaCppOptions:
    """How either llama.cpp runtime serves a student (settings `llamacpp_*`, factory.py)."""

    gguf_dir: str | Path
    outtype: str = "f16"
    slots: int = 4
    ctx_per_slot: int = 2048
    threads: int | None = None  # unset: half the cores, as the transformers backend
    queue_size: int = 256
    queue_timeout_s: float | None = None

    @property
    def thread_count(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 2) // 2)


def gguf_codec(path: str | Path, options: LlamaCppOptions) -> tuple[Codec, GGUFExport]:
    """The student's codec (its context cut to a slot's) and its GGUF export (made once, cached)."""
    codec = Codec(path)
    export = cached_export(path, options.gguf_dir, options.outtype)
    codec.max_context = min(codec.max_context, options.ctx_per_slot)
    return codec, export


class LlamaCppBackend(Backend):
    """A causal student as GGUF on llama.cpp: `slots` sequences decode together (continuous batching)."""

    kind = "llamacpp"

    def __init__(self, path: str | Path, options: LlamaCppOptions):
        self.codec, self.export = gguf_codec(path, options)
        self.eos = set(self.codec.eos_ids)
        self.queue_size = options.queue_size
        self.engine = LlamaCppEngine(
            self.export.gguf,
            slots=options.slots,
            ctx_per_slot=self.codec.max_context,
            threads=options.thread_count,
            max_wait_s=options.queue_timeout_s,
        )

    @property
    def queue_depth(self) -> int:
        return self.engine.waiting

    @property
    def running(self) -> int:
        return self.engine.running

    async def generate(self, prompt_ids: Seq[int], params: SamplingParams) -> Generation:
        result, seqs = self._start(list(prompt_ids), params, None)
        try:
            return await result
        except asyncio.CancelledError:  # the caller went away: stop at the next step
            _cancel(seqs)
            raise

    def stream(self, prompt_ids: Seq[int], params: SamplingParams) -> AsyncIterator[Delta | Generation]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        result, seqs = self._start(list(prompt_ids), params, sink)  # QueueFull here, before any response
        result.add_done_callback(lambda _: queue.put_nowait(END))

        return QueuedStream(queue, result, lambda: _cancel(seqs))

    async def score(self, prompt_ids: Seq[int], continuations: Seq[Seq[int]]) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        prompt = list(prompt_ids)
        self._check_room(len(continuations))
        futures, seqs = [], []
        for cont in continuations:
            seq, future = self._score_sequence(loop, prompt + list(cont), max(0, len(prompt) - 1))
            seqs.append(seq)
            futures.append(future)
        self._submit(seqs)
        return list(await asyncio.gather(*futures))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)

    # --- internals -----------------------------------------------------------------------------------

    def _score_sequence(
        self, loop: asyncio.AbstractEventLoop, tokens: list[int], start: int
    ) -> tuple[Sequence, asyncio.Future]:
        """A sequence that only reads `tokens`: the logprob of each token after position `start`."""
        scores: list[float] = []

        def collect(pos: int, logits: np.ndarray) -> None:
            scores.append(float(log_softmax(logits)[tokens[pos + 1]]))

        future = loop.create_future()
        seq = Sequence(
            tokens,
            0,
            Sampler(SamplingParams(max_tokens=0, temperature=0.0)),
            on_token=lambda _token, _logits: True,
            on_done=self._settle(loop, future, lambda: scores),
            on_prompt=collect,
            logits_from=start,
        )
        return seq, future

    def _check_room(self, wanted: int) -> None:
        if self.engine.waiting + wanted > self.queue_size:
            raise QueueFull(f"{self.engine.waiting} requests are waiting for a llama.cpp slot")

    def _submit(self, seqs: list[Sequence]) -> None:
        try:
            for seq in seqs:
                self.engine.submit(seq)
        except EngineClosed as exc:
            raise ModelNotReady(f"{exc}; retry shortly") from None

    def _start(
        self, prompt: list[int], params: SamplingParams, sink: Sink | None
    ) -> tuple[asyncio.Future, list[Sequence]]:
        loop = asyncio.get_running_loop()
        self._check_room(params.n)
        runs = [_ChoiceRun(self.codec, self.eos, i, params, sink) for i in range(params.n)]
        prompt_logprobs: list[TokenLogprob] = []
        want_echo = params.echo and params.logprobs is not None
        futures = []
        seqs = []
        for i, run in enumerate(runs):
            future = loop.create_future()
            on_prompt: Callable[[int, np.ndarray], None] | None = None
            if want_echo and i == 0:

                def echo(pos: int, logits: np.ndarray) -> None:
                    lp = log_softmax(logits)
                    prompt_logprobs.append(
                        token_logprob(self.codec, lp, prompt[pos + 1], params.logprobs or 0)
                    )

                on_prompt = echo

            seed = None if params.seed is None else params.seed + i
            seqs.append(
                Sequence(
                    prompt,
                    params.max_tokens,
                    Sampler(params, seed),
                    on_token=run.on_token,
                    on_done=self._settle(loop, future, run.choice),
                    on_prompt=on_prompt,
                    logits_from=0 if on_prompt is not None else None,
                )
            )
            futures.append(future)
        self._submit(seqs)

        def generation(choices: list[Choice]) -> Generation:
            echoed = None
            if want_echo:
                first = TokenLogprob(self.codec.token_text(prompt[0]), None) if prompt else None
                echoed = ([first] if first else []) + prompt_logprobs
            return Generation(choices, len(prompt), echoed)

        result = loop.create_future()

        def gathered(done: asyncio.Future) -> None:
            if result.done():
                return
            if done.cancelled():
                result.cancel()
            elif done.exception() is not None:
                result.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                result.set_result(generation(done.result()))

        asyncio.gather(*futures).add_done_callback(gathered)
        return result, seqs

    @staticmethod
    def _settle(
        loop: asyncio.AbstractEventLoop, future: asyncio.Future, value: Callable[[], object]
    ) -> Callable[[BaseException | None], None]:
        """The engine's on_done for one sequence: computes its value on the engine thread, hands it over."""

        def done(error: BaseException | None) -> None:
            if error is None:
                try:
                    outcome: object = value()
                except Exception as exc:
                    error = exc
            if isinstance(error, EngineClosed):
                error = ModelNotReady(f"{error}; retry shortly")

            def settle() -> None:
                if future.done():
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(outcome)

            loop.call_soon_threadsafe(settle)

        return done
