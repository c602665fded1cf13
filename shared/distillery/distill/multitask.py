"""One training example's tasks and their token ids, without a database.

    answer task     (task 0): ANSWER_PREFIX + question + options (+ context) -> "gold option text"
    teacher m task  (task m): prefix_m      + question + options (+ context) -> rationale of teacher m

`distill.tasks` (rows streamed from PostgreSQL) and the offline GPU run (`scripts/gpu/run_gpu_small.py`,
JSON Lines files) both build a run's training rows with these functions, so the two train on the same
rows. Nothing here imports SQLAlchemy or the store.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from distillery.distill.config import DataFilters, TrainConfig
from distillery.distill.encoding import StudentEncoder
from distillery.rationales.checks import clean_rationale
from distillery.rationales.prompts import ANSWER_PREFIX, answer_target, student_input, teacher_prefix
from distillery.records import Example


class ConfigError(ValueError):
    """A request field that does not fit the stored data."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TeacherTask:
    """Teacher m's rationale task: task id m, its instruction prefix and alpha_m."""

    task_id: int
    name: str
    teacher_id: int
    prefix: str
    alpha: float


@dataclass(frozen=True)
class ResolvedRun:
    """A config whose names have been resolved to rows; the dataset builder's input."""

    config: TrainConfig
    dataset_id: int
    job_ids: tuple[str, ...]
    teachers: tuple[TeacherTask, ...]
    train_examples: int
    eval_examples: int
    student: str  # what `resolve_model` loads: a known name, an HF dir, a registered model's dir

    @property
    def task_names(self) -> list[str]:
        return ["answer", *(t.name for t in self.teachers)]

    @property
    def weights(self) -> list[float]:
        """(w_A, alpha_1, ..., alpha_M) in task-id order."""
        return [self.config.answer_weight, *(t.alpha for t in self.teachers)]


def teacher_tasks(
    cfg: TrainConfig, teachers: Sequence[tuple[str, int, str | None]]
) -> tuple[TeacherTask, ...]:
    """Task ids 1..M for `teachers` (name, teacher id, stored prefix or None), in the given order; a prefix
    two tasks would share (the answer task's included) is a ConfigError."""
    used = {ANSWER_PREFIX: "the answer task"}
    tasks = []
    for task_id, (name, teacher_id, stored) in enumerate(teachers, start=1):
        prefix = stored or teacher_prefix(name)
        if prefix in used:
            raise ConfigError(
                "teachers", f"teacher '{name}' uses prefix {prefix!r}, already used by {used[prefix]}"
            )
        used[prefix] = f"teacher '{name}'"
        tasks.append(TeacherTask(task_id, name, teacher_id, prefix, cfg.alpha_of(name)))
    return tuple(tasks)


def taught_teachers(run: ResolvedRun) -> list[TeacherTask]:
    """The teachers whose tasks enter the training rows: alpha 0 is training without the teacher."""
    return [t for t in run.teachers if t.alpha > 0]


@dataclass(frozen=True)
class Task:
    task_id: int
    input: str
    target: str


def shuffled(example: Example, seed: int) -> Example:
    """The example with its options in a fixed pseudo-random order (per example id and seed)."""
    order = list(range(len(example.options)))
    random.Random(f"{seed}:{example.id}").shuffle(order)
    return replace(
        example, options=tuple(example.options[i] for i in order), answer=order.index(example.answer)
    )


def add_rationale(bucket: list[str], text: str, filters: DataFilters) -> None:
    """Append a teacher's rationale for one example to its `bucket` (its usable texts so far, in order):
    cleaned (or stripped), and only while the bucket holds fewer than `samples_per_teacher`."""
    text = clean_rationale(text, strip_lead=True) if filters.clean else text.strip()
    if text and len(bucket) < filters.samples_per_teacher:
        bucket.append(text)


def rationale_passes(truncated: bool, agrees: bool | None, filters: DataFilters) -> bool:
    """Whether a rationale with these flags may become a task (`drop_truncated`, `drop_disagreeing`)."""
    return not (filters.drop_truncated and truncated) and not (filters.drop_disagreeing and agrees is False)


def example_tasks(
    example: Example, cfg: TrainConfig, teachers: Sequence[tuple[TeacherTask, Sequence[str]]]
) -> list[Task]:
    """The answer task, then each (teacher, its usable rationale texts for this example) as tasks."""
    asked = shuffled(example, cfg.hyperparameters.seed) if cfg.filters.shuffle_options else example
    tasks = [Task(0, student_input(asked, ANSWER_PREFIX), answer_target(asked, cfg.answer_format))]
    for teacher, texts in teachers:
        for text in texts:
            tasks.append(Task(teacher.task_id, student_input(example, teacher.prefix), text))
    return tasks


def encode_row(example_id: str, tasks: Sequence[Task], encoder: StudentEncoder) -> dict[str, Any]:
    """A training row: one example holding every task's token ids (see `distill.collator`)."""
    input_ids, labels = [], []
    for task in tasks:
        ids, lab = encoder.encode(task.input, task.target)
        input_ids.append(ids)
        labels.append(lab)
    num_tokens = sum(len(x) for x in input_ids) + (sum(len(x) for x in labels) if encoder.seq2seq else 0)
    return {
        "example_id": example_id,
        "input_ids": input_ids,
        "labels": labels,
        "task_ids": [t.task_id for t in tasks],
        "num_tokens": num_tokens,
    }
