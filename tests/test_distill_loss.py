"""The TinyLLM loss: one forward pass over all tasks equals the official three passes; labels and alpha."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.distill.collator import MultiTaskCollator
from distillery.distill.encoding import StudentEncoder
from distillery.distill.loss import IGNORE_INDEX, task_losses, tinyllm_loss
from distillery.distill.trainer import decoder_inputs, load_student
from distillery.modelhub import resolve_model
from distillery.rationales.checks import clean_rationale
from distillery.rationales.prompts import ANSWER_PREFIX, answer_target, student_input, teacher_prefix

TEACHERS = ("flan-t5-xl", "llama-2-7b-chat")
MODELS = [("tiny-causal", False), ("tiny-t5", True)]


def _arc_rows(encoder: StudentEncoder, n: int = 4, teachers: tuple[str, ...] = TEACHERS) -> list[dict]:
    """n ARC examples encoded as multi-task rows (answer + one task per teacher), as the trainer sees them."""
    examples = load_jsonl(sample_file("arc", "train"))[:n]
    texts: dict[tuple[str, str], str] = {}
    with (SAMPLES_DIR / "rationales" / "arc" / "train.jsonl").open() as fh:
        for line in fh:
            item = json.loads(line)
            texts[(item["id"], item["teacher"])] = clean_rationale(item["rationale"], strip_lead=True)
    rows = []
    for ex in examples:
        tasks = [(0, student_input(ex, ANSWER_PREFIX), answer_target(ex))]
        for task_id, name in enumerate(TEACHERS, start=1):
            if name in teachers:
                tasks.append((task_id, student_input(ex, teacher_prefix(name)), texts[(ex.id, name)]))
        encoded = [encoder.encode(prompt, target) for _, prompt, target in tasks]
        rows.append(
            {
                "input_ids": [e[0] for e in encoded],
                "labels": [e[1] for e in encoded],
                "task_ids": [t for t, _, _ in tasks],
            }
        )
    return rows


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def student(request):
    name, seq2seq = request.param
    path = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = StudentEncoder(tokenizer, seq2seq, max_input_tokens=96, max_target_tokens=40)
    model = load_student(path, seq2seq)
    model.eval()
    return model, encoder


def _one_pass(model, encoder, batch, weights, num_tasks=3):
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if encoder.seq2seq:
        kwargs["decoder_input_ids"] = decoder_inputs(model, batch["labels"])
    logits = model(**kwargs).logits
    losses = task_losses(logits, batch["labels"], batch["task_ids"], num_tasks, causal=not encoder.seq2seq)
    return tinyllm_loss(losses, weights), losses


def test_one_pass_loss_equals_three_official_passes(student):
    model, encoder = student
    rows = _arc_rows(encoder)
    collate = MultiTaskCollator(encoder.tokenizer.pad_token_id)
    weights = torch.tensor([1.0, 0.5, 2.0])
    with torch.no_grad():
        ours, per_task = _one_pass(model, encoder, collate(rows), weights)
        # Official style: one forward pass per task, the model's own (token-mean) loss, then weighted.
        official = torch.zeros(())
        for task in range(3):
            sub = collate([{k: [r[k][task]] for k in ("input_ids", "labels", "task_ids")} for r in rows])
            loss = model(
                input_ids=sub["input_ids"], attention_mask=sub["attention_mask"], labels=sub["labels"]
            ).loss
            assert per_task[task].item() == pytest.approx(loss.item(), abs=1e-4)
            official += weights[task] * loss
    assert ours.item() == pytest.approx(official.item(), abs=1e-4)


def test_labels_never_include_prompt_or_padding(student):
    _, encoder = student
    rows = _arc_rows(encoder)
    batch = MultiTaskCollator(encoder.tokenizer.pad_token_id, pad_to_multiple_of=8)(rows)
    flat = [(ids, lab) for r in rows for ids, lab in zip(r["input_ids"], r["labels"], strict=True)]
    assert batch["input_ids"].shape[0] == len(flat) == 12
    assert batch["task_ids"].tolist() == [t for r in rows for t in r["task_ids"]]
    examples = load_jsonl(sample_file("arc", "train"))[:4]
    for i, (ids, labels) in enumerate(flat):
        scored = batch["labels"][i] != IGNORE_INDEX
        assert not scored[len(labels) :].any(), "padding is scored"
        target = [v for v in labels if v != IGNORE_INDEX]
        if encoder.seq2seq:
            assert batch["labels"][i][: len(labels)].tolist() == labels == target
            continue
        assert not (scored & (batch["attention_mask"][i] == 0)).any(), "padding is scored"
        task = batch["task_ids"][i].item()
        prefix = ANSWER_PREFIX if task == 0 else teacher_prefix(TEACHERS[task - 1])
        prompt = encoder.prompt_ids(student_input(examples[i // 3], prefix))
        # Everything up to the end of the prompt is unscored; what is scored is the target, in place.
        assert not scored[: len(prompt)].any(), "prompt tokens are scored"
        assert ids[: len(prompt)] == prompt
        assert batch["input_ids"][i][scored].tolist() == target == ids[len(prompt) :]


def test_truncated_target_gets_no_end_token(student):
    _, encoder = student
    long = " ".join(["word"] * 200)
    assert encoder.stop_token_ids[0] not in encoder.target_ids(long)
    assert len(encoder.target_ids(long)) == encoder.max_target_tokens
    assert encoder.target_ids("(a) yes")[-1] in encoder.stop_token_ids


def test_alpha_zero_equals_training_without_the_teacher(student):
    model, encoder = student
    collate = MultiTaskCollator(encoder.tokenizer.pad_token_id)
    with_teacher = collate(_arc_rows(encoder, teachers=TEACHERS))
    without = collate(_arc_rows(encoder, teachers=("flan-t5-xl",)))

    def loss_and_grads(batch, weights):
        model.zero_grad()
        loss, _ = _one_pass(model, encoder, batch, torch.tensor(weights))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss_a, grads_a = loss_and_grads(with_teacher, [1.0, 0.5, 0.0])
    loss_b, grads_b = loss_and_grads(without, [1.0, 0.5, 0.0])
    model.zero_grad()
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
