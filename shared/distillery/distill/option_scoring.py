"""The one option scorer: what `/v1/predict`'s likelihood fallback, `distillery eval` and the experiments
compute from the log-probabilities of each option's answer target.

The definitions are lm-evaluation-harness's for multiple-choice tasks (`Task.process_results`):

- `acc`: the option whose continuation has the highest sum of token log-probabilities;
- `acc_norm`: the same sum divided by the continuation's length, `len(choice)` of the option's string
  (characters, as the harness's `acc_norm` does; its `acc_bytes` divides by UTF-8 bytes, the same for
  ASCII text);
- ties go to the first option (`numpy.argmax`).

The continuation of option i is its answer target (`answer_target`, e.g. `(b) option text`) after the
answer-task prompt; the student's end token is not scored (it says nothing about which option is right,
and the harness scores none). As in the harness, whitespace that ends the prompt (the newline a causal
student's prompt ends with) belongs to the continuation and is scored with it (`split_prompt`); the
length `acc_norm` divides by is still the option string's. The per-token mean (the base of the
calibrated score: the mean minus the mean under a content-free prompt) is kept beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from distillery.rationales.prompts import AnswerFormat, answer_target
from distillery.records import Example

if TYPE_CHECKING:  # the encoder brings in transformers; exporting a task needs none of it
    from distillery.distill.encoding import StudentEncoder


def option_targets(example: Example, answer_format: AnswerFormat = "letter_text") -> list[str]:
    """The continuation scored for each option, in order: its answer target in the student's format."""
    return [answer_target(replace(example, answer=i), answer_format) for i in range(len(example.options))]


def scored_target_ids(encoder: StudentEncoder, target: str) -> list[int]:
    """The tokens of `target` that are scored: the trainer's target ids without the end token."""
    ids = encoder.target_ids(target)
    return ids[:-1] if len(ids) > 1 and ids[-1] in encoder.stop_token_ids else ids


def split_prompt(encoder: StudentEncoder, prompt_ids: list[int]) -> tuple[list[int], list[int]]:
    """(context, lead): the prompt's trailing whitespace tokens are the lead of every continuation.

    lm-evaluation-harness moves a context's trailing whitespace into the continuation before it scores
    it; causal students only (a seq2seq prompt is the encoder's input, nothing of it is scored).
    """
    if encoder.seq2seq:
        return prompt_ids, []
    special = set(encoder.tokenizer.all_special_ids)
    cut = len(prompt_ids)
    while (
        cut > 1
        and prompt_ids[cut - 1] not in special
        and not encoder.tokenizer.decode([prompt_ids[cut - 1]]).strip()
    ):
        cut -= 1
    return prompt_ids[:cut], prompt_ids[cut:]


def best(scores: Sequence[float]) -> int:
    """Index of the highest score, the first one on ties (as `numpy.argmax`)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


@dataclass(frozen=True)
class OptionScores:
    """Per-token log-probabilities of every option's continuation, and the scores derived from them."""

    targets: tuple[str, ...]
    logprobs: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, targets: Sequence[str], logprobs: Sequence[Sequence[float]]) -> OptionScores:
        if len(targets) != len(logprobs):
            raise ValueError(f"{len(targets)} targets but {len(logprobs)} log-probability rows")
        return cls(tuple(targets), tuple(tuple(float(v) for v in row) for row in logprobs))

    @property
    def acc_scores(self) -> list[float]:
        """Summed log-probability of each continuation (lm-eval `acc`)."""
        return [sum(row) for row in self.logprobs]

    @property
    def acc_norm_scores(self) -> list[float]:
        """Summed log-probability per character of each continuation (lm-eval `acc_norm`)."""
        return [sum(row) / max(len(t), 1) for row, t in zip(self.logprobs, self.targets, strict=True)]

    @property
    def mean_scores(self) -> list[float]:
        """Mean log-probability per scored token (the base of the calibrated score)."""
        return [sum(row) / max(len(row), 1) for row in self.logprobs]

    @property
    def acc(self) -> int:
        return best(self.acc_scores)

    @property
    def acc_norm(self) -> int:
        return best(self.acc_norm_scores)
