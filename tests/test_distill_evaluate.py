"""Evaluation: answer parsing into accuracy, letter distributions, option likelihoods, predictions file."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from distillery.datasets import load_jsonl, sample_file
from distillery.distill.encoding import StudentEncoder
from distillery.distill.evaluate import (
    CONTENT_FREE,
    EvalOptions,
    evaluate,
    option_scores,
    shared_prompt_logprobs,
    summarise,
    target_logprobs,
)
from distillery.distill.option_scoring import OptionScores, option_targets
from distillery.distill.trainer import load_student
from distillery.modelhub import resolve_model
from distillery.rationales.prompts import ANSWER_PREFIX, student_input


def test_summary_reports_accuracy_stderr_and_letter_distributions():
    predictions = [
        {"gold": 0, "predicted": 0, "acc_predicted": 0, "acc_norm_predicted": 1, "calibrated_predicted": 0},
        {"gold": 1, "predicted": 0, "acc_predicted": 0, "acc_norm_predicted": 1, "calibrated_predicted": 1},
        {
            "gold": 2,
            "predicted": None,
            "acc_predicted": 2,
            "acc_norm_predicted": 1,
            "calibrated_predicted": 2,
        },
        {"gold": 0, "predicted": 0, "acc_predicted": 1, "acc_norm_predicted": 1, "calibrated_predicted": 0},
    ]
    metrics = summarise(predictions)
    assert metrics["n"] == 4
    assert metrics["accuracy"] == 0.5 and metrics["stderr"] == pytest.approx(0.25)
    assert metrics["parsed"] == 0.75
    # A student that always says (a) is visible in the distribution, whatever its accuracy.
    assert metrics["letter_distribution"] == {"a": 3, "none": 1}
    assert metrics["gold_distribution"] == {"a": 2, "b": 1, "c": 1}
    assert metrics["acc"] == 0.5 and metrics["acc_norm"] == 0.25
    # The reports' likelihood column is acc_norm.
    assert metrics["likelihood_accuracy"] == 0.25 and metrics["likelihood_letter_distribution"] == {"b": 4}
    assert metrics["calibrated_accuracy"] == 1.0


def test_acc_sums_log_probabilities_and_acc_norm_divides_by_the_targets_length():
    # lm-evaluation-harness: acc = argmax sum(logprobs), acc_norm = argmax sum(logprobs) / len(choice).
    scores = OptionScores.of(["(a) x", "(b) a much longer option"], [[-1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    assert scores.acc_scores == [-2.0, -4.0] and scores.acc == 0
    assert scores.acc_norm_scores == pytest.approx([-2.0 / 5, -4.0 / 24]) and scores.acc_norm == 1
    assert scores.mean_scores == [-1.0, -1.0]
    assert OptionScores.of(["a", "b"], [[-1.0], [-1.0]]).acc == 0  # ties: the first option, as numpy.argmax


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
    items = [(student_input(e, ANSWER_PREFIX), option_targets(e)) for e in examples]
    batched = shared_prompt_logprobs(model, encoder, items)
    for (prompt, targets), scores in zip(items, batched, strict=True):
        full = target_logprobs(model, encoder, [(prompt, t) for t in targets])
        for shared_row, full_row in zip(scores, full, strict=True):
            assert shared_row == pytest.approx(full_row, abs=1e-4)
    # The content-free prompt keeps the options and drops the question.
    plain, free = (
        option_scores(model, encoder, examples[:1]),
        option_scores(model, encoder, examples[:1], True),
    )
    assert free[0].targets == plain[0].targets == tuple(items[0][1])
    assert free[0].logprobs != plain[0].logprobs and CONTENT_FREE == "N/A"


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
        assert len(row["acc_scores"]) == len(row["acc_norm_scores"]) == len(example.options)
        assert len(row["calibrated_scores"]) == len(example.options)
        assert row["correct"] == (row["predicted"] == example.answer)
    assert set(rows[0]["explanations"]) == {"flan-t5-xl"} and "explanations" not in rows[2]
