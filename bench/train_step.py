"""Training throughput of our TinyLLM step against the official style, same model, same data.

ours:     all 1 + M tasks of a batch in ONE forward/backward pass, padded to the batch's longest sequence
official: one forward pass per task (answer, teacher 1, teacher 2), each padded to the maximum length,
          the weighted sum of the three losses, one backward (as the published TinyLLM trainer does)

Both run the same optimizer step on the same examples (vendored ARC sample with the paper's FLAN-T5 and
LLaMA-2 rationales). Throughput counts real (non-padding) tokens per second. The last line is
`one_pass_vs_official=<ratio>` (ours / official; higher is better).

    python bench/train_step.py --quick         # SmolLM2-135M, 2 steps of 2 examples each
    python bench/train_step.py --model tiny-causal --steps 10
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoTokenizer

from distillery.datasets import SAMPLES_DIR, load_jsonl, sample_file
from distillery.distill.collator import MultiTaskCollator
from distillery.distill.encoding import StudentEncoder
from distillery.distill.loss import IGNORE_INDEX, task_losses, tinyllm_loss
from distillery.distill.trainer import decoder_inputs, load_student
from distillery.modelhub import resolve_model
from distillery.rationales.checks import clean_rationale
from distillery.rationales.prompts import ANSWER_PREFIX, answer_target, student_input, teacher_prefix

TEACHERS = ("flan-t5-xl", "llama-2-7b-chat")
WEIGHTS = torch.tensor([1.0, 0.5, 0.5])


def encoded_rows(encoder: StudentEncoder, count: int) -> list[dict]:
    """`count` ARC examples as multi-task rows: answer task + one rationale task per paper teacher."""
    rationales: dict[tuple[str, str], str] = {}
    with (SAMPLES_DIR / "rationales" / "arc" / "train.jsonl").open() as fh:
        for line in fh:
            item = json.loads(line)
            rationales[(item["id"], item["teacher"])] = clean_rationale(item["rationale"], strip_lead=True)
    rows = []
    for ex in load_jsonl(sample_file("arc", "train"))[:count]:
        tasks = [(student_input(ex, ANSWER_PREFIX), answer_target(ex))]
        tasks += [(student_input(ex, teacher_prefix(t)), rationales[(ex.id, t)]) for t in TEACHERS]
        encoded = [encoder.encode(prompt, target) for prompt, target in tasks]
        rows.append(
            {"input_ids": [e[0] for e in encoded], "labels": [e[1] for e in encoded], "task_ids": [0, 1, 2]}
        )
    return rows


def real_tokens(rows: list[dict], seq2seq: bool) -> int:
    total = sum(len(ids) for r in rows for ids in r["input_ids"])
    return total + (sum(len(lab) for r in rows for lab in r["labels"]) if seq2seq else 0)


def _pad(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s[:width])
    return out


def one_pass_step(model, encoder: StudentEncoder, rows: list[dict], collate: MultiTaskCollator) -> float:
    batch = collate(rows)
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if encoder.seq2seq:
        kwargs["decoder_input_ids"] = decoder_inputs(model, batch["labels"])
    logits = model(**kwargs).logits
    loss = tinyllm_loss(
        task_losses(logits, batch["labels"], batch["task_ids"], 3, causal=not encoder.seq2seq), WEIGHTS
    )
    loss.backward()
    return loss.item()


def official_step(
    model, encoder: StudentEncoder, rows: list[dict], input_width: int, label_width: int
) -> float:
    pad = encoder.tokenizer.pad_token_id
    loss = torch.zeros(())
    for task in range(3):
        inputs = [r["input_ids"][task] for r in rows]
        labels = [r["labels"][task] for r in rows]
        ids = _pad(inputs, input_width, pad)
        mask = _pad([[1] * len(s) for s in inputs], input_width, 0)
        lab = _pad(labels, label_width if encoder.seq2seq else input_width, IGNORE_INDEX)
        loss = loss + WEIGHTS[task] * model(input_ids=ids, attention_mask=mask, labels=lab).loss
    loss.backward()
    return loss.item()


def timed(step, optimizer, batches: list[list[dict]]) -> float:
    start = time.perf_counter()
    for rows in batches:
        step(rows)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 measured steps of batch 2 each")
    parser.add_argument("--model", default="smollm2-135m", help="known model name or HF dir")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    # The caps default to TrainConfig's (what a run trains with unless told otherwise).
    parser.add_argument("--max-input-tokens", type=int, default=512)
    parser.add_argument("--max-target-tokens", type=int, default=128)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps = 2, 2

    path = resolve_model(args.model)
    seq2seq = bool(getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False))
    encoder = StudentEncoder(
        AutoTokenizer.from_pretrained(path), seq2seq, args.max_input_tokens, args.max_target_tokens
    )
    model = load_student(path, seq2seq)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rows = encoded_rows(encoder, 1 + args.batch_size * args.steps)
    # One example warms both up (first-call allocations); the measured steps use the rest.
    warmup = rows[:1]
    measured = [rows[1 + i * args.batch_size : 1 + (i + 1) * args.batch_size] for i in range(args.steps)]
    collate = MultiTaskCollator(encoder.tokenizer.pad_token_id)
    # The official style pads every task to the longest sequence the length caps allow.
    head = len(encoder.prompt_ids(""))
    input_width = head + args.max_input_tokens + (0 if seq2seq else args.max_target_tokens)
    label_width = args.max_target_tokens

    def ours(batch: list[dict]) -> float:
        return one_pass_step(model, encoder, batch, collate)

    def official(batch: list[dict]) -> float:
        return official_step(model, encoder, batch, input_width, label_width)

    tokens = sum(real_tokens(b, seq2seq) for b in measured)
    print(
        f"model {args.model}, batch {args.batch_size} examples x 3 tasks, {args.steps} steps, "
        f"{tokens} real tokens"
    )
    for name, step in (("one_pass", ours), ("official", official)):
        timed(step, optimizer, [warmup])
        seconds = timed(step, optimizer, measured)
        rate = tokens / seconds
        print(f"{name}: {rate:.1f} tokens/s ({seconds:.1f} s)")
        if name == "one_pass":
            ours_rate = rate
        else:
            official_rate = rate
    print(f"one_pass_vs_official={ours_rate / official_rate:.2f}")


if __name__ == "__main__":
    main()
