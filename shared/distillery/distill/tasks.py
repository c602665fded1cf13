"""The multi-task training set: per example, the answer task and one rationale task per teacher.

    answer task     (task 0): ANSWER_PREFIX + question + options (+ context) -> "gold option text"
    teacher m task  (task m): prefix_m      + question + options (+ context) -> rationale of teacher m

Rows are streamed from PostgreSQL (server-side cursor, a chunk of examples at a time), encoded, and
written once to an Arrow file in the run directory; training memory-maps that file, and a resumed run
reads the same file, so the data order after a crash is the order before it.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
from sqlalchemy.orm import Session

from distillery.distill.checks import ResolvedRun, rationale_scope
from distillery.distill.encoding import StudentEncoder
from distillery.rationales.checks import clean_rationale
from distillery.rationales.prompts import ANSWER_PREFIX, answer_target, student_input
from distillery.records import Example
from distillery.store import models as m
from distillery.store.examples import split_query, to_record

CHUNK = 256
FEATURES = datasets.Features(
    {
        "example_id": datasets.Value("string"),
        "input_ids": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "labels": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "task_ids": datasets.Sequence(datasets.Value("int32")),
        "num_tokens": datasets.Value("int32"),
    }
)


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


def _examples(session: Session, run: ResolvedRun) -> Iterator[list[tuple[int, Example]]]:
    # The first `train_examples` (the config's limit, less any questions held out for model selection).
    stmt = split_query(run.dataset_id, run.config.split, run.train_examples)
    chunk: list[tuple[int, Example]] = []
    for row in session.scalars(stmt.execution_options(yield_per=CHUNK)):
        chunk.append((row.id, to_record(row)))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _rationales(
    session: Session, run: ResolvedRun, example_ids: list[int]
) -> dict[tuple[int, int], list[str]]:
    """Usable rationale texts per (example row id, teacher id), jobs in the given order, then sample index."""
    cfg = run.config
    stmt = rationale_scope(run.dataset_id, cfg.split, run.job_ids).where(
        m.Rationale.example_id.in_(example_ids),
        m.Rationale.teacher_id.in_([t.teacher_id for t in run.teachers]),
    )
    if cfg.filters.drop_truncated:
        stmt = stmt.where(m.Rationale.truncated.is_(False))
    if cfg.filters.drop_disagreeing:
        stmt = stmt.where(m.Rationale.agrees_with_gold.is_not(False))
    job_rank = {job_id: i for i, job_id in enumerate(run.job_ids)}
    rows = sorted(session.scalars(stmt), key=lambda r: (job_rank.get(r.job_id, 0), r.job_id, r.sample_index))
    found: dict[tuple[int, int], list[str]] = defaultdict(list)
    for r in rows:
        text = clean_rationale(r.text, strip_lead=True) if cfg.filters.clean else r.text.strip()
        bucket = found[(r.example_id, r.teacher_id)]
        if text and len(bucket) < cfg.filters.samples_per_teacher:
            bucket.append(text)
    return found


def iter_tasks(session: Session, run: ResolvedRun) -> Iterator[tuple[Example, list[Task]]]:
    """Each training example with its tasks, answer task first, in stable example order."""
    cfg = run.config
    teachers = [t for t in run.teachers if t.alpha > 0]  # alpha 0 is training without the teacher: skip it
    for chunk in _examples(session, run):
        texts = _rationales(session, run, [row_id for row_id, _ in chunk]) if teachers else {}
        for row_id, example in chunk:
            asked = shuffled(example, cfg.hyperparameters.seed) if cfg.filters.shuffle_options else example
            tasks = [Task(0, student_input(asked, ANSWER_PREFIX), answer_target(asked, cfg.answer_format))]
            for teacher in teachers:
                for text in texts.get((row_id, teacher.teacher_id), []):
                    tasks.append(Task(teacher.task_id, student_input(example, teacher.prefix), text))
            yield example, tasks


def encode_rows(session: Session, run: ResolvedRun, encoder: StudentEncoder) -> Iterator[dict[str, Any]]:
    """Dataset rows: one per example, holding every task's token ids."""
    for example, tasks in iter_tasks(session, run):
        input_ids, labels = [], []
        for task in tasks:
            ids, lab = encoder.encode(task.input, task.target)
            input_ids.append(ids)
            labels.append(lab)
        num_tokens = sum(len(x) for x in input_ids) + (sum(len(x) for x in labels) if encoder.seq2seq else 0)
        yield {
            "example_id": example.id,
            "input_ids": input_ids,
            "labels": labels,
            "task_ids": [t.task_id for t in tasks],
            "num_tokens": num_tokens,
        }


def build_dataset(
    session: Session, run: ResolvedRun, encoder: StudentEncoder, path: Path
) -> datasets.Dataset:
    """The run's training set as a memory-mapped Arrow file at `path`, written once (atomically)."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            with datasets.arrow_writer.ArrowWriter(features=FEATURES, path=str(partial)) as writer:
                for row in encode_rows(session, run, encoder):
                    writer.write(row)
                writer.finalize()
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(path))
