"""In-process transformers backend (CPU, or one local GPU) behind the micro-batcher.

Jobs with the same sampling setup share one `generate` call: causal prompts are left-padded with an
attention mask (transformers derives position ids from it), so a sequence decodes the same greedy
tokens alone or in a batch. Each row keeps its own `max_tokens` and stop strings through a per-row
stopping criterion; streamed rows get their tokens from a batch-aware streamer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.batcher import Job, MicroBatcher
from distillery_gateway.engine.codec import Codec
from distillery_gateway.engine.streams import END, QueuedStream
from distillery_gateway.engine.text import IncrementalText, cut_at_stop
from distillery_gateway.engine.types import Choice, Delta, Generation, SamplingParams, TokenLogprob

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()

Sink = Callable[[Delta], None]
PROMPT_CHUNK = 64  # prompt positions per forward pass when an echoed prompt's logprobs are scored alone
# Most logits (rows x padded width x vocabulary) a batch's prefill may keep so that its echoed prompts are
# scored from that same forward pass (1 GiB at float32); a bigger batch scores them prompt by prompt.
ECHO_LOGITS_BUDGET = 1 << 28
# from_pretrained is not thread-safe (it builds on a process-wide meta-device context): one at a time.
_LOAD_LOCK = threading.Lock()


@dataclass
class _Generate:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink | None = None


@dataclass
class _Score:
    prompt_ids: list[int]
    continuations: list[list[int]]


@dataclass
class _Row:
    """One sequence of a batch: choice `index` of `job`."""

    job: Job
    index: int
    params: SamplingParams
    sink: Sink | None
    stream: IncrementalText | None = None
    generated: int = 0
    done: bool = False
    stop_at: int | None = None  # tokens generated when a stop string completed


class _RowStopper(StoppingCriteria):
    """Per-row end: the row's own max_tokens, its stop strings, or its caller going away."""

    def __init__(self, rows: list[_Row], prefix: int, decode: Callable[[list[int]], str]):
        self.rows, self.prefix, self.decode = rows, prefix, decode

    def __call__(self, input_ids: torch.LongTensor, scores: object, **kwargs: object) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prefix
        flags = []
        for i, row in enumerate(self.rows):
            done = generated >= row.params.max_tokens or row.job.cancelled or row.stop_at is not None
            if not done and row.params.stop:
                text = self.decode(input_ids[i, self.prefix :].tolist())
                if cut_at_stop(text, row.params.stop)[1]:
                    row.stop_at, done = generated, True
            flags.append(done)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


class _RowStreamer(BaseStreamer):
    """Hands each new token of a streamed row to its IncrementalText and the text to the row's sink."""

    def __init__(self, rows: list[_Row], eos: set[int]):
        self.rows, self.eos, self.seen_prompt = rows, eos, False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # generate() first pushes the prompt (or the decoder start token)
            self.seen_prompt = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            if row.sink is None or row.done:
                continue
            if token in self.eos or row.job.cancelled:
                row.done = True
                continue
            assert row.stream is not None
            piece = row.stream.push(token)
            row.generated += 1
            if piece:
                row.sink(Delta(row.index, piece))
            if row.stream.stopped or row.generated >= row.params.max_tokens:
                row.done = True

    def end(self) -> None:
        pass


class _StepLogprobs:
    """Log-probabilities of generated tokens, kept step by step as `generate` runs: per step and row only
    the chosen token's and the `top` best (O(steps x rows x top)), never a vocabulary's worth per step.

    A forward hook sees each step's logits (raw, before any sampling warper, as OpenAI reports them);
    a step's chosen token is the next forward's input, so only the latest step's distribution is held.
    """

    def __init__(self, model: torch.nn.Module, top: int):
        self.top = top
        self.chosen: list[torch.Tensor] = []  # per step: [rows] logprob of the token generated there
        self.best: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: ([rows, top] values, ids)
        self._latest: torch.Tensor | None = None  # the last step's log-softmax, until its token is known
        self._handle = model.register_forward_hook(self._step, with_kwargs=True)

    def _step(self, module: object, args: tuple, kwargs: dict, output: object) -> None:
        if self._latest is not None:
            fed = kwargs.get("decoder_input_ids", kwargs.get("input_ids"))
            assert isinstance(fed, torch.Tensor)
            self._keep(fed[:, -1])
        logits = output.logits[:, -1, :]  # type: ignore[attr-defined]
        self._latest = torch.log_softmax(logits.float(), dim=-1)
        if self.top > 0:
            values, ids = self._latest.topk(self.top, dim=-1)
            self.best.append((values, ids))

    def _keep(self, tokens: torch.Tensor) -> None:
        assert self._latest is not None
        self.chosen.append(self._latest.gather(-1, tokens[:, None])[:, 0])
        self._latest = None

    def detach(self) -> None:
        self._handle.remove()

    def last_step(self, tokens: torch.Tensor) -> None:
        """`tokens`: what the last step chose (no forward pass follows it to tell)."""
        if self._latest is not None:
            self._keep(tokens)

    def row(self, i: int, steps: int) -> list[tuple[float, list[tuple[float, int]]]]:
        """Row `i`'s first `steps` steps: (chosen logprob, [(alternative logprob, token id)...])."""
        out = []
        for step in range(steps):
            alternatives: list[tuple[float, int]] = []
            if self.top > 0:
                values, ids = self.best[step]
                alternatives = list(zip(values[i].tolist(), ids[i].tolist(), strict=True))
            out.append((float(self.chosen[step][i]), alternatives))
        return out


class _EchoLogprobs:
    """The logprobs of echoed prompts, read off `generate`'s first forward pass (the prefill, run with
    every position's logits): the batch scores its prompts and starts generating in one pass.

    `wanted`: batch row -> (its prompt, top alternatives). Rows are left-padded to `width`, so a
    prompt's positions are the last `len(prompt)` ones and position j's logits predict token j + 1. A
    prefill that returns fewer positions' logits scores nothing (the caller scores those prompts alone).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        width: int,
        wanted: dict[int, tuple[list[int], int]],
        score: Callable[[torch.Tensor, list[int], int], list[TokenLogprob]],
    ):
        self.width, self.wanted, self.score = width, wanted, score
        self.scored: dict[int, list[TokenLogprob]] = {}
        self._seen = False
        self._handle = model.register_forward_hook(self._prefill)

    def _prefill(self, module: object, args: tuple, output: object) -> None:
        if self._seen:
            return
        self._seen = True
        logits: torch.Tensor = output.logits  # type: ignore[attr-defined]
        if logits.shape[1] != self.width:
            return
        for row, (prompt, top) in self.wanted.items():
            if len(prompt) >= 2:
                self.scored[row] = self.score(logits[row, -len(prompt) : -1], prompt[1:], top)

    def detach(self) -> None:
        self._handle.remove()


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TransformersBackend(Backend):
    """A student loaded with transformers; batched generation on a dedicated thread."""

    kind = "transformers"

    def __init__(
        self,
        path: str | Path,
        *,
        batch_max_size: int = 16,
        batch_wait_ms: float = 5.0,
        queue_size: int = 256,
        on_batch: Callable[[int], None] | None = None,
        threads: int | None = None,
        queue_timeout_s: float | None = None,
    ):
        self.codec = Codec(path)
        config = AutoConfig.from_pretrained(str(path))
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        self.device = _device()
        with _LOAD_LOCK:
            self.model = auto.from_pretrained(str(path), dtype=torch.float32).to(self.device).eval()
        # Intra-op threads of the generate thread only (the setting is per thread): by default half the
        # cores, leaving the rest to HTTP; more threads than free cores make every step wait on the
        # slowest one, which on a busy host costs far more than it gains.
        self.threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self.seq2seq = self.codec.seq2seq
        self.eos = set(self.codec.eos_ids)
        # Without `logits_to_keep`, a model's forward returns every position's logits anyway.
        self.keep_all: dict[str, int] = {"logits_to_keep": 0} if self.model._supports_logits_to_keep() else {}
        head = self.model.get_output_embeddings()
        self.vocab = head.weight.shape[0] if head is not None else len(self.codec.tokenizer)
        self.batcher = MicroBatcher(
            self._run,
            max_rows=batch_max_size,
            wait_s=batch_wait_ms / 1000,
            max_queue=queue_size,
            name="generate",
            on_batch=on_batch,
            thread_init=lambda: torch.set_num_threads(self.threads),
            max_wait_s=queue_timeout_s,
        )

    @property
    def queue_depth(self) -> int:
        return self.batcher.depth

    @property
    def running(self) -> int:
        return self.batcher.running_rows

    # --- the async side -------------------------------------------------------------------------

    @staticmethod
    def _key(params: SamplingParams) -> Hashable:
        # Rows of one generate() share the sampling setup; a seeded request runs alone, since a shared
        # random stream would make its result depend on its batch companions.
        if params.seed is not None and not params.greedy:
            return ("seed", object())
        sampling = ("greedy",) if params.greedy else ("sample", params.temperature, params.top_p)
        return (*sampling, params.logprobs is not None or params.echo)

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        job = Job(self._key(params), params.n, _Generate(list(prompt_ids), params))
        return await self.batcher.submit(job)

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams) -> AsyncIterator[Delta | Generation]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        job = Job(self._key(params), params.n, _Generate(list(prompt_ids), params, sink))
        future = self.batcher.enqueue(job)  # QueueFull here, before any response is started
        future.add_done_callback(lambda _: queue.put_nowait(END))
        return QueuedStream(queue, future, lambda: self.batcher.cancel(job))

    async def score(
        self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        job = Job(("score",), len(continuations), _Score(list(prompt_ids), [list(c) for c in continuations]))
        return await self.batcher.submit(job)

    async def aclose(self) -> None:
        await self.batcher.close()
        del self.model

    # --- the generate thread ----------------------------------------------------------------------

    def _run(self, jobs: Sequence[Job]) -> None:
        if isinstance(jobs[0].payload, _Score):
            # One forward pass per job (its options side by side): a job's scores never depend on
            # which other jobs happened to share the batch.
            with torch.inference_mode():
                for job in jobs:
                    p: _Score = job.payload
                    scored = self._logprobs([p.prompt_ids] * len(p.continuations), p.continuations)
                    job.resolve([chosen for chosen, _ in scored])
            return
        self._generate(jobs)

    def _pad(self, seqs: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.codec.pad_id
        ids = [[pad] * (width - len(s)) + s if left else s + [pad] * (width - len(s)) for s in seqs]
        mask = [
            [0] * (width - len(s)) + [1] * len(s) if left else [1] * len(s) + [0] * (width - len(s))
            for s in seqs
        ]
        return torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device)

    def _generation_config(self, params: SamplingParams, max_new: int) -> GenerationConfig:
        config = GenerationConfig.from_dict(self.model.generation_config.to_dict())
        config.update(
            max_new_tokens=max_new,
            min_new_tokens=None,
            do_sample=not params.greedy,
            temperature=None if params.greedy else params.temperature,
            top_p=None if params.greedy else params.top_p,
            top_k=None,
            num_beams=1,
            pad_token_id=self.codec.pad_id,
            eos_token_id=sorted(self.eos),
            return_dict_in_generate=True,
            output_logits=False,  # logprobs are kept step by step, top-k only (`_StepLogprobs`)
            output_scores=False,
        )
        return config

    def _generate(self, jobs: Sequence[Job]) -> None:
        rows: list[_Row] = []
        for job in jobs:
            p: _Generate = job.payload
            for index in range(p.params.n):
                stream = IncrementalText(self.codec, p.params.stop) if p.sink else None
                rows.append(_Row(job, index, p.params, p.sink, stream))
        prompts = [r.job.payload.prompt_ids for r in rows]
        input_ids, mask = self._pad(prompts, left=not self.seq2seq)
        prefix = 1 if self.seq2seq else input_ids.shape[1]
        first = rows[0].params
        tops = [r.params.logprobs for r in rows if r.params.logprobs is not None]
        recorder = _StepLogprobs(self.model, max(tops)) if tops else None
        config = self._generation_config(first, max(r.params.max_tokens for r in rows))
        stopper = _RowStopper(rows, prefix, lambda ids: self.codec.decode(ids))
        streamer = _RowStreamer(rows, self.eos) if any(r.sink for r in rows) else None
        echo = self._echo(rows, input_ids.shape[1])
        try:
            with torch.inference_mode(), torch.random.fork_rng(devices=[]):
                if first.seed is not None:
                    torch.manual_seed(first.seed)
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([stopper]),
                    streamer=streamer,
                    **(self.keep_all if echo is not None else {}),
                )
        finally:
            if recorder is not None:
                recorder.detach()
            if echo is not None:
                echo.detach()
        if recorder is not None:
            recorder.last_step(out.sequences[:, -1])
        sequences = out.sequences[:, prefix:].tolist()
        choices = [
            self._choice(row, seq, i, recorder)
            for i, (row, seq) in enumerate(zip(rows, sequences, strict=False))
        ]
        start = 0
        for job in jobs:
            p = job.payload
            mine = choices[start : start + p.params.n]
            job_rows = rows[start : start + p.params.n]
            first_row = start
            start += p.params.n
            if p.sink is not None:
                for row, choice in zip(job_rows, mine, strict=True):
                    assert row.stream is not None
                    p.sink(Delta(row.index, row.stream.finish(choice.text), choice.finish_reason))
            prompt_logprobs = None
            if p.params.echo and p.params.logprobs is not None:
                scored = echo.scored.get(first_row) if echo is not None else None
                if scored is not None:
                    prompt_logprobs = [TokenLogprob(self.codec.token_text(p.prompt_ids[0]), None), *scored]
                else:
                    prompt_logprobs = self._prompt_logprobs(p.prompt_ids, p.params.logprobs)
            job.resolve(Generation(mine, len(p.prompt_ids), prompt_logprobs))

    def _echo(self, rows: list[_Row], width: int) -> _EchoLogprobs | None:
        """Scores the batch's echoed prompts from its prefill when their logits fit `ECHO_LOGITS_BUDGET`
        (one pass instead of a prefill plus a pass per prompt); None: none to score, or too big."""
        wanted = {
            i: (r.job.payload.prompt_ids, r.params.logprobs)
            for i, r in enumerate(rows)
            if r.index == 0 and r.params.echo and r.params.logprobs is not None
        }
        if not wanted or self.seq2seq or len(rows) * width * self.vocab > ECHO_LOGITS_BUDGET:
            return None
        return _EchoLogprobs(self.model, width, wanted, self._scored_tokens)

    def _choice(self, row: _Row, seq: list[int], i: int, recorder: _StepLogprobs | None) -> Choice:
        ids = seq[: row.params.max_tokens]
        end = next((k for k, t in enumerate(ids) if t in self.eos), None)
        if row.stop_at is not None and (end is None or row.stop_at <= end):
            text, _ = cut_at_stop(self.codec.decode(ids[: row.stop_at]), row.params.stop)
            kept, reason = row.stop_at, "stop"
        elif end is not None:
            text, kept, reason = self.codec.decode(ids[:end]), end + 1, "stop"
        else:
            text, kept, reason = self.codec.decode(ids), len(ids), "length"
        choice = Choice(text, reason, kept)
        top = row.params.logprobs
        if top is not None and recorder is not None:
            piece = self.codec.token_text
            choice.logprobs = [
                TokenLogprob(piece(token), chosen, {piece(t): v for v, t in alternatives[:top]})
                for token, (chosen, alternatives) in zip(ids[:kept], recorder.row(i, kept), strict=True)
            ]
        return choice

    def _prompt_logprobs(self, prompt: list[int], top: int) -> list[TokenLogprob]:
        """Logprobs of the prompt's own tokens (the first has none), for `echo` with `logprobs`.

        The prompt goes through the model `PROMPT_CHUNK` positions at a time over its KV cache, so
        memory holds one chunk's logits (chunk x vocabulary), whatever the prompt's length.
        """
        text = self.codec.token_text
        if self.seq2seq or len(prompt) < 2:
            return [TokenLogprob(text(t), None) for t in prompt]
        scored = [TokenLogprob(text(prompt[0]), None)]
        cache = None
        with torch.inference_mode():
            for start in range(0, len(prompt) - 1, PROMPT_CHUNK):
                chunk = prompt[start : start + PROMPT_CHUNK]
                out = self.model(
                    input_ids=torch.tensor([chunk], device=self.device), cache=cache, use_cache=True
                )
                cache = out.cache
                following = prompt[start + 1 : start + 1 + len(chunk)]  # position j predicts token j + 1
                scored += self._scored_tokens(out.logits[0, : len(following)], following, top)
        return scored

    def _scored_tokens(self, logits: torch.Tensor, following: list[int], top: int) -> list[TokenLogprob]:
        """Each token of `following` with its logprob and the `top` alternatives, from the logits (one
        row per token) that predict it."""
        text = self.codec.token_text
        lp = torch.log_softmax(logits.float(), dim=-1)
        chosen = lp.gather(-1, torch.tensor(following, device=lp.device)[:, None])[:, 0].tolist()
        best: list[dict[str, float]] = [{} for _ in following]
        if top > 0:
            values, ids = lp.topk(top, dim=-1)
            best = [
                {text(t): v for v, t in zip(vs, ts, strict=True)}
                for vs, ts in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        return [TokenLogprob(text(t), v, alt) for t, v, alt in zip(following, chosen, best, strict=True)]

    def _logprobs(
        self, prompts: list[list[int]], conts: list[list[int]], top: int = 0
    ) -> list[tuple[list[float], list[dict[int, float]]]]:
        """Per continuation: each token's logprob after its prompt, and the `top` alternatives there."""
        if self.seq2seq:
            enc_ids, enc_mask = self._pad(prompts, left=False)
            labels, _ = self._pad(conts, left=False)
            labels[labels == self.codec.pad_id] = -100
            for i, c in enumerate(conts):  # a real pad id inside a target is a target token
                labels[i, : len(c)] = torch.tensor(c, device=self.device)
            logits = self.model(input_ids=enc_ids, attention_mask=enc_mask, labels=labels).logits
            steps = [(i, list(range(len(c)))) for i, c in enumerate(conts)]
        else:
            # Left padding puts every continuation at the end, so only the last positions need logits.
            seqs = [p + c for p, c in zip(prompts, conts, strict=True)]
            ids, mask = self._pad(seqs, left=True)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(c) for c in conts) + 1
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
            ).logits
            # Position j of the kept logits predicts the token at width - keep + j + 1.
            steps = [(i, [keep - 1 - len(c) + k for k in range(len(c))]) for i, c in enumerate(conts)]
        results = []
        for (i, positions_i), cont in zip(steps, conts, strict=True):
            lp = torch.log_softmax(logits[i, positions_i].float(), dim=-1)
            chosen = lp.gather(-1, torch.tensor(cont, device=lp.device)[:, None])[:, 0].tolist()
            tops: list[dict[int, float]] = [{} for _ in cont]
            if top > 0:
                values, indices = lp.topk(top, dim=-1)
                tops = [
                    dict(zip(ix, vs, strict=True))
                    for ix, vs in zip(indices.tolist(), values.tolist(), strict=False)
                ]
            results.append((chosen, tops))
        return results
