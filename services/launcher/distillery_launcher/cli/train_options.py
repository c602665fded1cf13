"""The options of `distillery train` as one value, and the training-run request body they make."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery_launcher.cli.common import fail


@dataclass(frozen=True)
class TrainOptions:
    """Every option of the command, by name (see `distillery train --help` for each one's meaning)."""

    dataset: str | None
    student: str
    method: str
    split: str
    limit: int | None
    jobs: list[str]
    teachers: list[str]
    alpha: float
    alphas: str | None
    answer_weight: float
    lora: bool
    lora_r: int
    learning_rate: float
    epochs: float
    max_steps: int
    batch_size: int
    grad_accum: int
    seed: int
    max_input_tokens: int
    max_target_tokens: int
    save_steps: int
    logging_steps: int
    precision: str
    drop_truncated: bool
    drop_disagreeing: bool
    samples_per_teacher: int
    shuffle_options: bool
    answer_format: str
    lr_scheduler: str
    eval_split: str
    eval_limit: int | None
    likelihood: bool
    explain: int
    model_name: str | None
    config_file: Path | None
    local: bool
    follow: bool
    idempotency_key: str | None

    def request_body(self) -> dict[str, Any]:
        """The run's request body: the --config file as it is, or one made of the options."""
        if self.config_file is not None:
            return self._read_config(self.config_file)
        if not self.dataset:
            fail("--dataset is required (a stored dataset, e.g. arc; see `distillery data list`)")
        return {
            "student": self.student,
            "method": self.method,
            "dataset": self.dataset,
            "split": self.split,
            "limit": self.limit,
            "rationale_jobs": self.jobs,
            "teachers": self.teachers or None,
            "alpha": self.alpha,
            "alphas": parse_alphas(self.alphas),
            "answer_weight": self.answer_weight,
            "answer_format": self.answer_format,
            "lora": {"r": self.lora_r} if (self.lora or self.method == "lora") else None,
            "hyperparameters": self._hyperparameters(),
            "filters": {
                "drop_truncated": self.drop_truncated,
                "drop_disagreeing": self.drop_disagreeing,
                "samples_per_teacher": self.samples_per_teacher,
                "shuffle_options": self.shuffle_options,
            },
            "eval": {
                "split": None if self.eval_split.lower() == "none" else self.eval_split,
                "limit": self.eval_limit,
                "likelihood": self.likelihood,
                "calibrate": self.likelihood,
                "explain": self.explain,
            },
            "model_name": self.model_name,
        }

    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "seed": self.seed,
            "max_input_tokens": self.max_input_tokens,
            "max_target_tokens": self.max_target_tokens,
            "save_steps": self.save_steps,
            "logging_steps": self.logging_steps,
            "precision": self.precision,
            "lr_scheduler": self.lr_scheduler,
        }

    @staticmethod
    def _read_config(path: Path) -> dict[str, Any]:
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            fail(f"--config {path}: {exc}")
        return body


def parse_alphas(text: str | None) -> dict[str, float]:
    """`NAME=A,NAME=A` as {name: alpha}; a clear error naming --alphas for anything else."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            fail(
                f"--alphas: '{item}' is not NAME=NUMBER (example: --alphas flan-t5-xl=0.5,llama-2-7b-chat=1)"
            )
    return out
