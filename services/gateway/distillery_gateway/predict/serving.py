"""Multiple-choice answers from the student, prompted exactly as the trainer prompted it.

The answer task input is `student_input(example, answer_prefix)` wrapped by the trainer's encoder; the
greedy answer is mapped to an option with `parse_answer`. When it names no option, the option with the
best `acc_norm` score (`distillery.distill.option_scoring`, the scorer `distillery eval` reports: summed
log-probability of its answer target per character, in the answer format the student was trained on,
`option text` or `(b) option text`) is chosen, so `answer_index` is always valid. Every question of
a batch goes to the engine at once, so they share batched generate calls.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Literal

from distillery.distill.option_scoring import OptionScores, option_targets, scored_target_ids, split_prompt
from distillery.rationales.prompts import parse_answer, student_input, teacher_prefix
from distillery.records import OPTION_LETTERS, Example
from distillery_gateway.engine.backend import Backend
from distillery_gateway.engine.types import SamplingParams
from distillery_gateway.errors import APIError
from distillery_gateway.predict.protocol import (
    BatchPrediction,
    BatchPredictRequest,
    Prediction,
    PredictItem,
    PredictRequest,
)
from distillery_gateway.serving_base import ServingBase, engine_errors

ANSWER_TOKENS = 32  # a target is one line, `option text` or `(b) option text`
DEFAULT_TEACHER = "llama-2-7b-chat"  # the paper's `rationale: ` prefix, for students without teachers


def explain_prefix(backend: Backend, teacher: str | None, param: str) -> str:
    """The rationale prefix of `teacher` (one the student was trained with), or of its first teacher."""
    known = backend.codec.teacher_prefixes
    if teacher is None:
        return next(iter(known.values())) if known else teacher_prefix(DEFAULT_TEACHER)
    if known and teacher not in known:
        raise APIError(
            422,
            f"{param}: the served model was trained with teachers {sorted(known)}, not '{teacher}'",
            param=param,
            code="invalid_value",
        )
    return known.get(teacher) or teacher_prefix(teacher)


@dataclass(frozen=True)
class _Asked:
    """One question as the student is prompted: the answer prompt, and the rationale prompt if wanted."""

    example: Example
    prompt: list[int]
    rationale_prompt: list[int] | None

    @classmethod
    def of(cls, backend: Backend, item: PredictItem, teacher_param: str) -> _Asked:
        codec = backend.codec
        example = Example(
            id="request", question=item.question, options=tuple(item.options), answer=0, context=item.context
        )
        rationale_prompt = None
        if item.explain:
            prefix = explain_prefix(backend, item.teacher, teacher_param)
            rationale_prompt = codec.task_ids(student_input(example, prefix))
        return cls(example, codec.task_ids(student_input(example, codec.answer_prefix)), rationale_prompt)

    def tokens(self, rationale_tokens: int) -> tuple[int, int]:
        """(prompt, most completion) tokens of answering it."""
        if self.rationale_prompt is None:
            return len(self.prompt), ANSWER_TOKENS
        return len(self.prompt) + len(self.rationale_prompt), ANSWER_TOKENS + rationale_tokens


class PredictServing(ServingBase):
    route = "/v1/predict"

    async def predict(self, req: PredictRequest, caller: str | None = None) -> Prediction:
        async with AsyncExitStack() as stack:
            served, backend = await self.lease(stack, req.model)
            asked = _Asked.of(backend, req, "teacher")
            sequences = 1 + (asked.rationale_prompt is not None)
            await self.admit(stack, caller, sequences, asked.tokens(req.max_rationale_tokens), "explain")
            with engine_errors(self.manager):
                return await self._answer(backend, served.id, req, asked, req.max_rationale_tokens)

    async def predict_batch(self, req: BatchPredictRequest, caller: str | None = None) -> BatchPrediction:
        limit = self.settings.predict_max_items
        if len(req.items) > limit:
            raise APIError(
                422,
                f"items: at most {limit} items per request (got {len(req.items)}); split the batch",
                param="items",
                code="too_many_items",
            )
        started = time.perf_counter()
        async with AsyncExitStack() as stack:
            served, backend = await self.lease(stack, req.model)
            # Every item is validated and counted before anything is generated.
            asked = [_Asked.of(backend, item, f"items.{i}.teacher") for i, item in enumerate(req.items)]
            costs = [a.tokens(req.max_rationale_tokens) for a in asked]
            sequences = sum(1 + (a.rationale_prompt is not None) for a in asked)
            tokens = (sum(p for p, _ in costs), sum(c for _, c in costs))
            await self.admit(stack, caller, sequences, tokens, "items")
            with engine_errors(self.manager):
                answers = await asyncio.gather(
                    *(
                        self._answer(backend, served.id, item, a, req.max_rationale_tokens)
                        for item, a in zip(req.items, asked, strict=True)
                    )
                )
        return BatchPrediction(data=answers, model=served.id, latency_ms=_ms(started))

    async def _answer(
        self, backend: Backend, model: str, item: PredictItem, asked: _Asked, rationale_tokens: int
    ) -> Prediction:
        started = time.perf_counter()
        example, prompt = asked.example, asked.prompt
        greedy = SamplingParams(max_tokens=ANSWER_TOKENS, temperature=0.0, stop=("\n",))
        calls = [backend.generate(prompt, greedy)]
        if asked.rationale_prompt is not None:
            rationale = SamplingParams(max_tokens=rationale_tokens, temperature=0.0)
            calls.append(backend.generate(asked.rationale_prompt, rationale))
        generations = await asyncio.gather(*calls)
        self.count_tokens(
            sum(g.prompt_tokens for g in generations), sum(g.completion_tokens for g in generations)
        )
        index = parse_answer(generations[0].choices[0].text, item.options)
        method: Literal["generation", "likelihood"] = "generation"
        scores: list[float] | None = None
        if index is None:
            scored = await self._option_scores(backend, prompt, example)
            index, method, scores = scored.acc_norm, "likelihood", scored.acc_norm_scores
        self.metrics.predictions.labels(method).inc()
        return Prediction(
            answer_index=index,
            answer=item.options[index],
            answer_letter=OPTION_LETTERS[index],
            method=method,
            option_scores=scores,
            rationale=generations[1].choices[0].text.strip() if item.explain else None,
            model=model,
            latency_ms=_ms(started),
        )

    @staticmethod
    async def _option_scores(backend: Backend, prompt: list[int], example: Example) -> OptionScores:
        """Every option's answer target scored after the answer prompt, as `distillery eval` scores it."""
        targets = option_targets(example, backend.codec.answer_format)
        context, lead = split_prompt(backend.codec.encoder, prompt)
        ids = [lead + scored_target_ids(backend.codec.encoder, target) for target in targets]
        return OptionScores.of(targets, await backend.score(context, ids))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
