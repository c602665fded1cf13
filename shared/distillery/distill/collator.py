"""Batches of multi-task rows: every task of every example in one tensor, padded to the batch's longest.

A dataset row is one training example holding 1 + M encoded tasks (`input_ids`, `labels`, `task_ids`
are lists with one entry per task). The collator lays all of them out along the batch dimension, so the
trainer runs one forward pass per step instead of one per task, and pads only as far as this batch needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from distillery.distill.loss import IGNORE_INDEX


def _pad(rows: Sequence[Sequence[int]], value: int, multiple: int | None) -> torch.Tensor:
    width = max(len(r) for r in rows)
    if multiple:
        width = -(-width // multiple) * multiple
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@dataclass
class MultiTaskCollator:
    """Flatten (example, task) pairs into one right-padded batch with a `task_ids` vector."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs: list[Sequence[int]] = []
        labels: list[Sequence[int]] = []
        tasks: list[int] = []
        for row in features:
            inputs.extend(row["input_ids"])
            labels.extend(row["labels"])
            tasks.extend(row["task_ids"])
        input_ids = _pad(inputs, self.pad_token_id, self.pad_to_multiple_of)
        attention_mask = _pad([[1] * len(r) for r in inputs], 0, self.pad_to_multiple_of)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": _pad(labels, IGNORE_INDEX, self.pad_to_multiple_of),
            "task_ids": torch.tensor(tasks, dtype=torch.long),
        }
