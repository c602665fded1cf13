"""The multi-task training set: per example, the answer task and one rationale task per teacher.

    answer task     (task 0): ANSWER_PREFIX + question + options (+ context) -> "gold option text"
    teacher m task  (task m): prefix_m      + question + options (+ context) -> rationale of teacher m

Rows are streamed from PostgreSQL (server-side cursor, a chunk of examples at a time), encoded, and
written once to an Arrow file in the run directory; training memory-maps that file, and a resumed run
reads the same file, so the data order after a crash is the order before it. One example's tasks and
their encoding are `distill.multitask`'s (shared with the offline GPU run).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from sqlalchemy.orm import Session

from distillery.distill.checks import ResolvedRun, rationale_scope
from distillery.distill.encoding import StudentEncoder
from distillery.distill.multitask import Task as Task
from distillery.distill.multitask import add_rationale, encode_row, example_tasks, taught_teachers
from distillery.distill.multitask import shuffled as shuffled
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
        add_rationale(found[(r.example_id, r.teacher_id)], r.text, cfg.filters)
    return found


def iter_tasks(session: Session, run: ResolvedRun) -> Iterator[tuple[Example, list[Task]]]:
    """Each training example with its tasks, answer task first, in stable example order."""
    teachers = taught_teachers(run)
    for chunk in _examples(session, run):
        texts = _rationales(session, run, [row_id for row_id, _ in chunk]) if teachers else {}
        for row_id, example in chunk:
            found = [(t, texts.get((row_id, t.teacher_id), [])) for t in teachers]
            yield example, example_tasks(example, run.config, found)


def encode_rows(session: Session, run: ResolvedRun, encoder: StudentEncoder) -> Iterator[dict[str, Any]]:
    """Dataset rows: one per example, holding every task's token ids."""
    for example, tasks in iter_tasks(session, run):
        yield encode_row(example.id, tasks, encoder)


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
