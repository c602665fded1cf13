"""Datasets and examples: idempotent import and reads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Boolean, Select, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from distillery.records import Example
from distillery.store import models as m

BATCH = 1000


@dataclass(frozen=True)
class ImportResult:
    dataset: str
    split: str
    inserted: int
    updated: int
    unchanged: int


def get_or_create_dataset(session: Session, name: str, source: str | None = None) -> m.Dataset:
    stmt = insert(m.Dataset).values(name=name, source=source).on_conflict_do_nothing(index_elements=["name"])
    session.execute(stmt)
    return session.scalars(select(m.Dataset).where(m.Dataset.name == name)).one()


def import_examples(
    session: Session, name: str, split: str, examples: Sequence[Example], source: str | None = None
) -> ImportResult:
    """Upsert examples by (dataset, id): a re-import of the same file changes nothing."""
    dataset = get_or_create_dataset(session, name, source)
    inserted = updated = 0
    for start in range(0, len(examples), BATCH):
        rows = [
            {
                "dataset_id": dataset.id,
                "split": split,
                "external_id": ex.id,
                "question": ex.question,
                "options": list(ex.options),
                "answer": ex.answer,
                "context": ex.context,
            }
            for ex in examples[start : start + BATCH]
        ]
        values = insert(m.Example).values(rows)
        cols = ("split", "question", "options", "answer", "context")
        upsert: ReturningInsert[int, bool] = values.on_conflict_do_update(
            index_elements=["dataset_id", "external_id"],
            set_={c: values.excluded[c] for c in cols},
            # Only touch rows whose content differs, so re-imports are true no-ops.
            where=func.row(*(getattr(m.Example, c) for c in cols)).is_distinct_from(
                func.row(*(values.excluded[c] for c in cols))
            ),
        ).returning(m.Example.id, literal_column("(xmax = 0)", Boolean))
        for _, was_insert in session.execute(upsert):
            if was_insert:
                inserted += 1
            else:
                updated += 1
    if dataset.num_options is None and examples:
        dataset.num_options = max(len(ex.options) for ex in examples)
    return ImportResult(name, split, inserted, updated, len(examples) - inserted - updated)


def find_dataset(session: Session, name: str) -> m.Dataset | None:
    return session.scalars(select(m.Dataset).where(m.Dataset.name == name)).one_or_none()


def dataset_names(session: Session) -> list[str]:
    return list(session.scalars(select(m.Dataset.name).order_by(m.Dataset.name)))


def count_examples(session: Session, name: str, split: str | None = None) -> int:
    stmt = select(func.count()).select_from(m.Example).join(m.Dataset).where(m.Dataset.name == name)
    if split:
        stmt = stmt.where(m.Example.split == split)
    return session.scalar(stmt) or 0


def split_counts(session: Session) -> list[tuple[str, str, int]]:
    stmt = (
        select(m.Dataset.name, m.Example.split, func.count())
        .join(m.Example)
        .group_by(m.Dataset.name, m.Example.split)
        .order_by(m.Dataset.name, m.Example.split)
    )
    return [(name, split, count) for name, split, count in session.execute(stmt)]


def split_size(session: Session, dataset_id: int, split: str) -> int:
    """How many examples the dataset's split holds."""
    stmt = (
        select(func.count())
        .select_from(m.Example)
        .where(m.Example.dataset_id == dataset_id, m.Example.split == split)
    )
    return session.scalar(stmt) or 0


def split_query(
    dataset_id: int, split: str, limit: int | None = None, last: int | None = None
) -> Select[m.Example]:
    """SELECT of the split's example rows in their stable (import) order: the first `limit` if given, or
    the last `last`."""
    rows = select(m.Example).where(m.Example.dataset_id == dataset_id, m.Example.split == split)
    if last is not None:
        tail = rows.order_by(m.Example.id.desc()).limit(last).subquery()
        return select(m.Example).join(tail, m.Example.id == tail.c.id).order_by(m.Example.id)
    stmt = rows.order_by(m.Example.id)
    return stmt if limit is None else stmt.limit(limit)


def to_record(row: m.Example) -> Example:
    """The plain `Example` a stored example row holds."""
    return Example(row.external_id, row.question, tuple(row.options), row.answer, row.context)


def iter_examples(
    session: Session, name: str, split: str, ids: Sequence[str] | None = None, batch: int = 500
) -> Iterator[tuple[int, Example]]:
    """Stream (row id, Example) in a stable order without holding the split in memory."""
    stmt = (
        select(m.Example)
        .join(m.Dataset)
        .where(m.Dataset.name == name, m.Example.split == split)
        .order_by(m.Example.id)
        .execution_options(yield_per=batch)
    )
    if ids is not None:
        stmt = stmt.where(m.Example.external_id.in_(list(ids)))
    for row in session.scalars(stmt):
        yield row.id, to_record(row)


def load_examples(
    session: Session, name: str, split: str, ids: Sequence[str] | None = None
) -> list[tuple[int, Example]]:
    return list(iter_examples(session, name, split, ids))
