"""A dataset split as an lm-evaluation-harness task that loads offline: `<task>.yaml` + `<task>.jsonl`.

Each document holds the student's answer-task prompt (`student_input(example, "predict: ")`), the
answer target of every option (`(b) option text`) and the gold index, so lm-eval's `multiple_choice`
scoring of the task is distillery's own option scoring (`distillery.distill.option_scoring`): the
continuation of option i is `"\\n" + target_i` after the prompt, as a causal student sees it without
a chat template, and `acc` / `acc_norm` are computed the same way on both sides.

Run it with `lm_eval --include_path DIR --tasks <task> --model hf --model_args pretrained=MODEL_DIR`;
the YAML names the JSONL by its absolute path (lm-eval resolves `data_files` from the working directory),
and the `json` loader of `datasets` needs no network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distillery.distill.option_scoring import option_targets
from distillery.rationales.prompts import ANSWER_PREFIX, student_input
from distillery.records import Example

# Between the prompt and an option's target: the plain causal student's prompt ends with a newline.
TARGET_DELIMITER = "\n"


@dataclass(frozen=True)
class ExportedTask:
    name: str
    yaml_path: Path
    docs_path: Path
    n: int


def task_name(dataset: str, split: str) -> str:
    """`distillery_<dataset>_<split>`, with anything but letters, digits and `_` turned into `_`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"distillery_{dataset}_{split}")


def lm_eval_doc(example: Example) -> dict[str, Any]:
    """One task document: id, prompt, choices (the options' answer targets) and the gold index."""
    return {
        "id": example.id,
        "prompt": student_input(example, ANSWER_PREFIX),
        "choices": option_targets(example),
        "gold": example.answer,
    }


def task_config(name: str, docs_path: Path) -> dict[str, Any]:
    """The task YAML's content for documents at `docs_path`."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs_path.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": TARGET_DELIMITER,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def export_task(examples: Sequence[Example], dataset: str, split: str, out_dir: Path) -> ExportedTask:
    """Write `<task>.jsonl` and `<task>.yaml` into `out_dir` (created); ValueError for no examples."""
    if not examples:
        raise ValueError(f"{dataset}/{split} has no examples to export")
    name = task_name(dataset, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_path = out_dir / f"{name}.jsonl"
    with docs_path.open("w", encoding="utf-8") as fh:
        for example in examples:
            fh.write(json.dumps(lm_eval_doc(example), ensure_ascii=False) + "\n")
    yaml_path = out_dir / f"{name}.yaml"
    yaml_path.write_text(yaml.safe_dump(task_config(name, docs_path), sort_keys=False, allow_unicode=True))
    return ExportedTask(name, yaml_path, docs_path, len(examples))
