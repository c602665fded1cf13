"""Accuracy of a student on multiple-choice questions, three ways, with per-question predictions.

1. Generation: the student answers the answer-task prompt (greedy, batched; left padding for causal
   models) and `distillery.rationales.prompts.parse_answer` maps the text to an option — a parenthesised
   or bare letter with or without the option text, or the exact text of one option after
   `normalize_answer` (lowercase, no punctuation, no articles). Unparseable answers count as wrong and
   show up as `none` in the letter distribution.
2. Option log-likelihood, scored by `distillery.distill.option_scoring` (the scorer `/v1/predict` uses
   too): `acc` picks the option whose answer target has the highest summed log-probability after the
   answer-task prompt, `acc_norm` the highest per character, exactly as lm-evaluation-harness defines them.
3. Calibrated: each option's mean token log-probability minus its mean under a content-free prompt
   (question "N/A", same options, no context), which removes the student's prior for a letter or text.

The predicted-letter distribution is reported next to accuracy: a student that always answers "(a)"
has an accuracy near the gold share of "a", and only the distribution reveals it.
"""

from __future__ import annotations

import inspect
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel

from distillery.distill.config import TrainConfig
from distillery.distill.encoding import StudentEncoder
from distillery.distill.loss import IGNORE_INDEX, token_nll
from distillery.distill.option_scoring import (
    OptionScores,
    best,
    option_targets,
    scored_target_ids,
    split_prompt,
)
from distillery.distill.trainer import decoder_inputs
from distillery.rationales.prompts import ANSWER_PREFIX, AnswerFormat, parse_answer, student_input
from distillery.records import OPTION_LETTERS, Example

CONTENT_FREE = "N/A"
_T = TypeVar("_T")


@dataclass
class EvalOptions:
    batch_size: int = 16
    max_new_tokens: int = 32
    likelihood: bool = True
    calibrate: bool = True
    explain: int = 0  # questions to also ask for an explanation, per teacher prefix
    explain_tokens: int = 128
    answer_format: AnswerFormat = "letter_text"  # the form of the options' continuations (as trained)


def eval_options(cfg: TrainConfig) -> EvalOptions:
    """How a run's config asks its student to be evaluated."""
    e = cfg.eval
    return EvalOptions(
        e.batch_size, e.max_new_tokens, e.likelihood, e.calibrate, e.explain, answer_format=cfg.answer_format
    )


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def write_predictions(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", encoding="utf-8") as fh:
            for row in self.predictions:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        partial.replace(path)


def _batches(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _device(model: PreTrainedModel) -> torch.device:
    device: torch.device = next(model.parameters()).device
    return device


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model: PreTrainedModel, encoder: StudentEncoder, prompts: list[str], max_new_tokens: int
) -> list[str]:
    """Greedy continuations of `prompts` (one batch), special tokens dropped."""
    tok = encoder.tokenizer
    rows = [encoder.prompt_ids(p) for p in prompts]
    pad = tok.pad_token_id
    ids, mask = (_right_pad if encoder.seq2seq else _left_pad)(rows, pad)
    device = _device(model)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=encoder.stop_token_ids,
        pad_token_id=pad,
    )
    new = out if encoder.seq2seq else out[:, ids.shape[1] :]
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


@torch.inference_mode()
def target_logprobs(
    model: PreTrainedModel, encoder: StudentEncoder, pairs: list[tuple[str, str]]
) -> list[list[float]]:
    """Log-probability of every scored token of each (prompt, target), one full sequence each (the
    prompt's trailing whitespace is scored with the target, see `option_scoring.split_prompt`)."""
    encoded = []
    for prompt, target in pairs:
        ids, lead = split_prompt(encoder, encoder.prompt_ids(prompt))
        scored = lead + scored_target_ids(encoder, target)
        if encoder.seq2seq:
            encoded.append((ids, scored))
        else:
            encoded.append((ids + scored, [IGNORE_INDEX] * len(ids) + scored))
    device = _device(model)
    input_ids, mask = _right_pad([e[0] for e in encoded], encoder.tokenizer.pad_token_id)
    labels, _ = _right_pad([e[1] for e in encoded], IGNORE_INDEX)
    input_ids, mask, labels = input_ids.to(device), mask.to(device), labels.to(device)
    kwargs = {"input_ids": input_ids, "attention_mask": mask}
    if encoder.seq2seq:
        kwargs["decoder_input_ids"] = decoder_inputs(model, labels)
    logits = model(**kwargs).logits
    nll, scored_mask = token_nll(logits, labels, causal=not encoder.seq2seq)
    return [(-nll[i][scored_mask[i].bool()]).tolist() for i in range(len(pairs))]


@torch.inference_mode()
def shared_prompt_logprobs(
    model: PreTrainedModel, encoder: StudentEncoder, items: list[tuple[str, list[str]]]
) -> list[list[list[float]]]:
    """For each (prompt, targets): the log-probability of every scored token of every target after that
    prompt (the end token excluded).

    Causal students read each prompt once (the prompts of all items in one right-padded batch) and score
    all its targets from the KV cache, with the targets' true positions; the prompt is most of the tokens,
    so this is several times cheaper than one full sequence per target.
    """
    if encoder.seq2seq:
        flat = iter(target_logprobs(model, encoder, [(p, t) for p, targets in items for t in targets]))
        return [[next(flat) for _ in targets] for _, targets in items]
    device = _device(model)
    pad = encoder.tokenizer.pad_token_id
    split = [split_prompt(encoder, encoder.prompt_ids(prompt)) for prompt, _ in items]
    prompts = [context for context, _ in split]
    lengths = torch.tensor([len(p) for p in prompts])
    ids, mask = _right_pad(prompts, pad)
    params = inspect.signature(model.forward).parameters
    # Only the last real position of each prompt predicts a target token: skip the LM head elsewhere.
    keep = sorted(set((lengths - 1).tolist()))
    kwargs = {"logits_to_keep": torch.tensor(keep, device=device)} if "logits_to_keep" in params else {}
    head = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, **kwargs)
    at = [keep.index(n - 1) for n in lengths.tolist()] if kwargs else (lengths - 1).tolist()
    first = torch.log_softmax(head.logits[torch.arange(len(items)), torch.tensor(at)].float(), dim=-1)
    # transformers renamed past_key_values to cache (5.2x); accept both.
    name = "cache" if "cache" in params else "past_key_values"
    cache = getattr(head, name)
    owners = [b for b, (_, targets) in enumerate(items) for _ in targets]
    rows = [
        split[b][1] + scored_target_ids(encoder, t) for b, (_, targets) in enumerate(items) for t in targets
    ]
    cache.batch_select_indices(torch.tensor(owners, device=device))
    tail_ids, tail_mask = _right_pad(rows, pad)
    full_mask = torch.cat([mask[owners], tail_mask], dim=1)
    # Each target continues its own prompt, not the padded batch width.
    positions = lengths[owners][:, None] + torch.arange(tail_ids.shape[1])[None, :]
    tail = model(
        input_ids=tail_ids.to(device),
        attention_mask=full_mask.to(device),
        position_ids=positions.to(device),
        **{name: cache},
    )
    logp = torch.log_softmax(tail.logits.float(), dim=-1)
    scores: list[list[list[float]]] = [[] for _ in items]
    for i, (owner, row) in enumerate(zip(owners, rows, strict=True)):
        tokens = [float(first[owner, row[0]])] + [float(logp[i, j - 1, row[j]]) for j in range(1, len(row))]
        scores[owner].append(tokens)
    return scores


def option_scores(
    model: PreTrainedModel,
    encoder: StudentEncoder,
    examples: Sequence[Example],
    content_free: bool = False,
    answer_format: AnswerFormat = "letter_text",
) -> list[OptionScores]:
    """Every option's scores for each example after the answer-task prompt (or a content-free one)."""
    items = []
    for example in examples:
        asked = replace(example, question=CONTENT_FREE, context=None) if content_free else example
        items.append((student_input(asked, ANSWER_PREFIX), option_targets(example, answer_format)))
    logprobs = shared_prompt_logprobs(model, encoder, items)
    return [OptionScores.of(targets, rows) for (_, targets), rows in zip(items, logprobs, strict=True)]


def _letter(index: int | None) -> str:
    return "none" if index is None else OPTION_LETTERS[index]


def _distribution(letters: list[str]) -> dict[str, int]:
    counts = Counter(letters)
    return {k: counts[k] for k in sorted(counts, key=lambda k: (k == "none", k))}


def evaluate(
    model: PreTrainedModel,
    encoder: StudentEncoder,
    examples: Sequence[Example],
    options: EvalOptions | None = None,
    explain_prefixes: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Score `model` on `examples`; `progress(n)` is called after each batch with the questions done."""
    options = options or EvalOptions()
    was_training = model.training
    model.eval()
    predictions: list[dict[str, Any]] = []
    for batch in _batches(list(examples), options.batch_size):
        answers = generate(
            model, encoder, [student_input(e, ANSWER_PREFIX) for e in batch], options.max_new_tokens
        )
        scored: list[OptionScores | None] = [None] * len(batch)
        calibrated: list[list[float]] = [[] for _ in batch]
        if options.likelihood:
            found = option_scores(model, encoder, batch, answer_format=options.answer_format)
            scored = list(found)
            if options.calibrate:
                free = option_scores(model, encoder, batch, True, options.answer_format)
                calibrated = [
                    [a - b for a, b in zip(s.mean_scores, f.mean_scores, strict=True)]
                    for s, f in zip(found, free, strict=True)
                ]
        for i, (example, text) in enumerate(zip(batch, answers, strict=True)):
            predicted = parse_answer(text, example.options)
            row = {
                "id": example.id,
                "gold": example.answer,
                "generated": text,
                "predicted": predicted,
                "correct": predicted == example.answer,
            }
            option = scored[i]
            if option is not None:
                row["acc_scores"] = [round(v, 5) for v in option.acc_scores]
                row["acc_norm_scores"] = [round(v, 6) for v in option.acc_norm_scores]
                row["acc_predicted"], row["acc_norm_predicted"] = option.acc, option.acc_norm
            if calibrated[i]:
                row["calibrated_scores"] = [round(s, 5) for s in calibrated[i]]
                row["calibrated_predicted"] = best(calibrated[i])
            predictions.append(row)
        if progress is not None:
            progress(len(batch))
    if options.explain and explain_prefixes:
        asked = list(examples)[: options.explain]
        for name, prefix in explain_prefixes.items():
            for batch_start in range(0, len(asked), options.batch_size):
                batch = asked[batch_start : batch_start + options.batch_size]
                texts = generate(
                    model, encoder, [student_input(e, prefix) for e in batch], options.explain_tokens
                )
                for j, text in enumerate(texts):
                    predictions[batch_start + j].setdefault("explanations", {})[name] = text
    if was_training:
        model.train()
    return EvalResult(summarise(predictions), predictions)


def summarise(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracies (with binomial standard errors) and letter distributions of per-question predictions."""
    n = len(predictions)

    def acc(key: str) -> dict[str, float]:
        hits = sum(1 for p in predictions if p.get(key) == p["gold"])
        value = hits / n if n else 0.0
        return {
            "accuracy": round(value, 4),
            "stderr": round(math.sqrt(value * (1 - value) / n), 4) if n else 0.0,
        }

    metrics: dict[str, Any] = {
        "n": n,
        **acc("predicted"),
        "parsed": round(sum(p["predicted"] is not None for p in predictions) / n, 4) if n else 0.0,
        "letter_distribution": _distribution([_letter(p["predicted"]) for p in predictions]),
        "gold_distribution": _distribution([_letter(p["gold"]) for p in predictions]),
    }
    if predictions and "acc_predicted" in predictions[0]:
        # lm-evaluation-harness's `acc` and `acc_norm`; `likelihood_*` (the reports' column) is `acc_norm`.
        for key in ("acc", "acc_norm"):
            lik = acc(f"{key}_predicted")
            metrics[key], metrics[f"{key}_stderr"] = lik["accuracy"], lik["stderr"]
        metrics["likelihood_accuracy"], metrics["likelihood_stderr"] = (
            metrics["acc_norm"],
            metrics["acc_norm_stderr"],
        )
        metrics["likelihood_letter_distribution"] = _distribution(
            [_letter(p["acc_norm_predicted"]) for p in predictions]
        )
    if predictions and "calibrated_predicted" in predictions[0]:
        cal = acc("calibrated_predicted")
        metrics["calibrated_accuracy"], metrics["calibrated_stderr"] = cal["accuracy"], cal["stderr"]
        metrics["calibrated_letter_distribution"] = _distribution(
            [_letter(p["calibrated_predicted"]) for p in predictions]
        )
    return metrics


def load_for_eval(path: str | Path) -> tuple[PreTrainedModel, bool]:
    """A model dir loaded for inference (fp32 on CPU, bf16 on a GPU) -> (model, is_seq2seq)."""
    from transformers import AutoConfig

    from distillery.distill.trainer import load_student

    seq2seq = bool(getattr(AutoConfig.from_pretrained(str(path)), "is_encoder_decoder", False))
    cuda = torch.cuda.is_available()
    model = load_student(
        path, seq2seq, torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    )
    if cuda:
        model = model.to("cuda")
    model.eval()
    return model, seq2seq
