"""Evaluation: answer parsing into accuracy, letter distributions, option likelihoods, predictions file."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from distillery.datasets import load_jsonl, sample_file
from distillery.distill.encoding import StudentEncoder
from distillery.distill.evaluate import (
    EvalOptions,
    _option_pairs,
    evaluate,
    shared_prompt_logprobs,
    summarise,
    target_logprobs,
)
from distillery.distill.trainer import load_student
from distillery.modelhub import resolve_model


def test_summary_reports_accuracy_stderr_and_letter_distributions():
    predictions = [
        {"gold": 0, "predicted": 0, "likelihood_predicted": 1, "calibrated_predicted": 0},
        {"gold": 1, "predicted": 0, "likelihood_predicted": 1, "calibrated_predicted": 1},
        {"gold": 2, "predicted": None, "likelihood_predicted": 1, "calibrated_predicted": 2},
        {"gold": 0, "predicted": 0, "likelihood_predicted": 1, "calibrated_predicted": 0},
    ]
    metrics = summarise(predictions)
    assert metrics["n"] == 4
    assert metrics["accuracy"] == 0.5 and metrics["stderr"] == pytest.approx(0.25)
    assert metrics["parsed"] == 0.75
    # A student that always says (a) is visible in the distribution, whatever its accuracy.
    assert metrics["letter_distribution"] == {"a": 3, "none": 1}
    assert metrics["gold_distribution"] == {"a": 2, "b": 1, "c": 1}
    assert metrics["likelihood_accuracy"] == 0.25 and metrics["likelihood_letter_distribution"] == {"b": 4}
    assert metrics["calibrated_accuracy"] == 1.0


@pytest.fixture(scope="module", params=[("tiny-causal", False), ("tiny-t5", True)], ids=["causal", "t5"])
def student(request):
    name, seq2seq = request.param
    path = resolve_model(name)
    encoder = StudentEncoder(AutoTokenizer.from_pretrained(path), seq2seq, 96, 32)
    return load_student(path, seq2seq).eval(), encoder


def test_batched_shared_prompt_scores_equal_full_sequence_scores(student):
    model, encoder = student
    # Prompts of different lengths and option counts in one batch: padding and positions must not leak.
    examples = load_jsonl(sample_file("arc", "dev"))[:3] + load_jsonl(sample_file("pubmedqa", "dev"))[:2]
    items = []
    for example in examples:
        pairs = _option_pairs(example, content_free=False)
        items.append((pairs[0][0], [t for _, t in pairs]))
    batched = shared_prompt_logprobs(model, encoder, items)
    for (prompt, targets), scores in zip(items, batched, strict=True):
        full = target_logprobs(model, encoder, [(prompt, t) for t in targets])
        assert scores == pytest.approx(full, abs=1e-4)
    # The content-free prompt keeps the options and drops the question.
    free = _option_pairs(examples[0], content_free=True)
    assert "N/A" in free[0][0] and examples[0].question not in free[0][0]
    assert [t for _, t in free] == items[0][1]


def test_evaluate_writes_one_prediction_per_question(student, tmp_path):
    model, encoder = student
    examples = load_jsonl(sample_file("arc", "dev"))[:5]
    result = evaluate(
        model,
        encoder,
        examples,
        EvalOptions(batch_size=2, max_new_tokens=4, explain=2),
        {"flan-t5-xl": "explain: "},
    )
    assert result.metrics["n"] == 5
    assert sum(result.metrics["letter_distribution"].values()) == 5
    path = tmp_path / "predictions.jsonl"
    result.write_predictions(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in examples]
    for row, example in zip(rows, examples, strict=True):
        assert row["gold"] == example.answer
        assert len(row["option_scores"]) == len(row["calibrated_scores"]) == len(example.options)
        assert row["correct"] == (row["predicted"] == example.answer)
    assert set(rows[0]["explanations"]) == {"flan-t5-xl"} and "explanations" not in rows[2]
