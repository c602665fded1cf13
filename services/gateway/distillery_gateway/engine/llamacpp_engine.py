"""Continuous batching on llama.cpp (through llama-cpp-python's C API): parallel slots, one decode loop.

One thread owns the llama.cpp context. Every step it builds one batch from all active sequences: the
next token of each decoding sequence plus as much of waiting prompts as fits (prefill is chunked, so
a long prompt never stalls the others), runs one `llama_decode`, and samples each sequence's next
token from its logits. A sequence joins as soon as a slot is free and leaves as soon as it ends; its
slot's KV cache is dropped then. No asyncio here: callers get results through callbacks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from distillery_gateway.engine.sampling import Sampler
from distillery_gateway.engine.types import QueueTimeout

log = logging.getLogger(__name__)
llama_log = logging.getLogger("llama.cpp")
_LEVELS = {2: logging.WARNING, 3: logging.ERROR}  # ggml_log_level; info, debug and continuations dropped


@llama_cpp.llama_log_callback
def _log_to_python(level: int, text: bytes, _user_data: object) -> None:
    """llama.cpp's log, warnings and errors only, into Python logging (it prints every load detail)."""
    if level in _LEVELS:
        llama_log.log(_LEVELS[level], text.decode("utf-8", "replace").rstrip())


@dataclass(eq=False)
class Sequence:
    """One sequence to run: its prompt, how many tokens to sample, and where results go.

    `logits_from`: the first prompt position whose next-token logits the caller wants (`on_prompt`
    gets the logits predicting prompt[i + 1] for every i >= logits_from); None = none. `on_token` gets
    each sampled token with the logits it was drawn from and answers whether the sequence is done.
    """

    prompt: list[int]
    max_tokens: int
    sampler: Sampler
    on_token: Callable[[int, np.ndarray], bool]
    on_done: Callable[[BaseException | None], None]
    on_prompt: Callable[[int, np.ndarray], None] | None = None
    logits_from: int | None = None
    cancelled: bool = False
    # engine state
    seq_id: int = -1
    queued_at: float = 0.0  # monotonic time of submit()
    fed: int = 0
    generated: int = 0
    next_token: int | None = field(default=None, repr=False)


class EngineClosed(RuntimeError):
    """The engine was closed under the sequence."""


class LlamaCppEngine:
    """A GGUF loaded once; `slots` sequences decode together, more wait in a queue."""

    def __init__(
        self,
        gguf: str | Path,
        *,
        slots: int,
        ctx_per_slot: int,
        threads: int,
        n_batch: int = 512,
        max_wait_s: float | None = None,
    ):
        llama_cpp.llama_log_set(_log_to_python, None)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = ctx_per_slot * slots
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # each slot owns ctx_per_slot positions
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context for {gguf}")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.slots, self.ctx_per_slot, self.n_batch = slots, ctx_per_slot, n_batch
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._incoming: queue.SimpleQueue[Sequence | None] = queue.SimpleQueue()
        self._free = list(range(slots))
        self._active: list[Sequence] = []
        self._closed = False
        self.waiting = 0
        self.max_wait_s = max_wait_s  # a sequence still waiting for a slot after this fails (QueueTimeout)
        self._thread = threading.Thread(target=self._run, name="llamacpp-decode", daemon=True)
        self._thread.start()

    # --- any thread ----------------------------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        if self._closed:
            raise EngineClosed("the model was unloaded")
        if len(seq.prompt) + seq.max_tokens > self.ctx_per_slot:
            raise ValueError(
                f"prompt ({len(seq.prompt)} tokens) + max_tokens ({seq.max_tokens}) exceed the "
                f"{self.ctx_per_slot}-token context of a slot"
            )
        self.waiting += 1
        seq.queued_at = time.monotonic()
        self._incoming.put(seq)

    def close(self) -> None:
        """Finish the sequences already running, fail the waiting ones, free the model."""
        if self._closed:
            return
        self._closed = True
        self._incoming.put(None)
        self._thread.join()
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    @property
    def running(self) -> int:
        """Sequences decoding or prefilling now (the decode thread's list; its length reads safely)."""
        return len(self._active)

    # --- the decode thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        backlog: list[Sequence] = []
        stopping = False
        while True:
            stopping = self._take(backlog, block=not self._active and not backlog) or stopping
            if stopping and not self._active:
                for seq in backlog:
                    seq.on_done(EngineClosed("the model was unloaded"))
                return
            self._expire(backlog)
            while backlog and self._free and not stopping:
                seq = backlog.pop(0)
                self.waiting -= 1
                if seq.cancelled:
                    seq.on_done(None)
                    continue
                seq.seq_id = self._free.pop()
                self._active.append(seq)
            if self._active:
                try:
                    self._step()
                except Exception as exc:  # a failed decode fails the sequences in it, not the engine
                    log.exception("llama.cpp decode failed")
                    for seq in list(self._active):
                        self._finish(seq, exc)

    def _expire(self, backlog: list[Sequence]) -> None:
        """Fail the sequences that waited for a slot longer than `max_wait_s`."""
        if self.max_wait_s is None or not backlog:
            return
        late = time.monotonic() - self.max_wait_s
        for seq in [s for s in backlog if s.queued_at < late]:
            backlog.remove(seq)
            self.waiting -= 1
            seq.on_done(QueueTimeout(f"waited {self.max_wait_s:g} s for a llama.cpp slot"))

    def _take(self, backlog: list[Sequence], block: bool) -> bool:
        """Move submitted sequences to `backlog`; True when close() was called."""
        stopping = False
        try:
            item = self._incoming.get(block=block)
            while True:
                if item is None:
                    stopping = True
                else:
                    backlog.append(item)
                item = self._incoming.get_nowait()
        except queue.Empty:
            pass
        return stopping

    def _step(self) -> None:
        batch, n = self.batch, 0
        # (batch index, sequence, prompt position or -1, last of prompt) of every token whose logits are read
        outputs: list[tuple[int, Sequence, int, bool]] = []

        def add(seq: Sequence, token: int, pos: int, want: bool) -> None:
            nonlocal n
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = want
            n += 1

        for seq in self._active:  # decoding sequences first: one token each
            if seq.cancelled:
                continue
            if seq.next_token is not None:
                outputs.append((n, seq, -1, False))
                add(seq, seq.next_token, len(seq.prompt) + seq.generated - 1, True)
        for seq in self._active:  # then prompt chunks, as far as the batch allows
            if seq.cancelled or seq.fed >= len(seq.prompt) or n >= self.n_batch:
                continue
            end = min(len(seq.prompt), seq.fed + self.n_batch - n)
            for pos in range(seq.fed, end):
                last = pos == len(seq.prompt) - 1
                want = last or (seq.logits_from is not None and pos >= seq.logits_from)
                if want:
                    outputs.append((n, seq, pos, last))
                add(seq, seq.prompt[pos], pos, want)
            seq.fed = end
        for seq in [s for s in self._active if s.cancelled]:
            self._finish(seq, None)
        batch.n_tokens = n
        if n == 0:
            return
        code = llama_cpp.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        for index, seq, pos, last in outputs:
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,)
            )
            if pos >= 0 and not last:
                assert seq.on_prompt is not None
                seq.on_prompt(pos, logits)
                continue
            if seq.generated >= seq.max_tokens:
                self._finish(seq, None)
                continue
            token = seq.sampler.sample(logits)
            seq.generated += 1
            seq.next_token = token
            if seq.on_token(token, logits) or seq.generated >= seq.max_tokens or seq.cancelled:
                self._finish(seq, None)

    def _finish(self, seq: Sequence, error: BaseException | None) -> None:
        if seq in self._active:
            self._active.remove(seq)
            llama_cpp.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
            self._free.append(seq.seq_id)
        try:
            seq.on_done(error)
        except Exception:
            log.exception("a sequence's completion callback failed")
