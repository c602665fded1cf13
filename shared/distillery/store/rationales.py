"""Rationales in the database: batched idempotent writes, failures, stats, and the exchange format.

The exchange format is the one of ../shared/rationales (JSON Lines; `id`, `teacher`, `rationale`,
`truncated`, `agrees_with_gold`). Importing such a file makes its teachers *precomputed* teachers and
its lines the output of an `import`-kind job; exporting a job writes the same format back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    TextClause,
    case,
    cast,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session
from sqlalchemy.sql import sqltypes

from distillery.datasets import Problem
from distillery.rationales.checks import is_duplicate
from distillery.rationales.exchange import ImportTarget, RationaleLine
from distillery.rationales.exchange import RationaleFileError as RationaleFileError
from distillery.rationales.exchange import parse_rationale_file as parse_rationale_file
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery.store.examples import find_dataset, split_query, to_record
from distillery.teachers.base import TeacherSpec

BATCH = 1000
CONFLICT_KEY = ("job_id", "example_id", "teacher_id", "sample_index")
# Every writable column with the value a row gets when it leaves the column out.
COLUMN_DEFAULTS: dict[str, object] = {
    "sample_index": 0,
    "finish_reason": None,
    "prompt_tokens": None,
    "completion_tokens": None,
    "latency_ms": None,
    "template_version": None,
    "incontext_ids": [],
    "incontext_rationales": [],
    "truncated": False,
    "agrees_with_gold": None,
    "duplicate": False,
}
REQUIRED_COLUMNS = ("job_id", "example_id", "teacher_id", "text")
LINE_FIELDS = ("id", "teacher", "rationale", "truncated", "agrees_with_gold")


@dataclass(frozen=True)
class ImportSummary:
    job_id: str
    dataset: str
    split: str
    path: str
    lines: int
    inserted: int
    teachers: dict[str, int] = field(default_factory=dict)  # teacher name -> lines in the file
    created_job: bool = False

    @property
    def unchanged(self) -> int:
        return self.lines - self.inserted


def _complete(row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(REQUIRED_COLUMNS) - set(COLUMN_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown rationale column(s) {sorted(unknown)} "
            f"(accepted: {', '.join((*REQUIRED_COLUMNS, *COLUMN_DEFAULTS))})"
        )
    missing = [c for c in REQUIRED_COLUMNS if row.get(c) is None]
    if missing:
        raise ValueError(f"rationale row lacks required column(s) {missing}")
    return {**COLUMN_DEFAULTS, **row}


def _unnest_insert() -> TextClause:
    """INSERT ... SELECT FROM unnest(one array per column) ON CONFLICT DO NOTHING.

    One bound array per column keeps the statement short and constant: the driver neither re-parses a
    statement with thousands of placeholders nor re-plans it per batch size (VALUES lists did both, and
    that parsing, not PostgreSQL, capped throughput).
    """
    table = m.Rationale.__table__
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
    names = [*REQUIRED_COLUMNS, *COLUMN_DEFAULTS]
    arrays, selected = [], []
    for name in names:
        column_type = table.c[name].type.dialect_impl(dialect)
        if isinstance(column_type, sqltypes.JSON):
            # JSON travels as text and is parsed by PostgreSQL.
            arrays.append(f"CAST(:{name} AS text[])")
            selected.append(f"CAST(t.{name} AS jsonb)")
        else:
            # No length in the cast: casting to varchar(n) would cut an over-long value silently, while
            # the insert into the column rejects it.
            base = re.sub(r"\(\d+\)$", "", column_type.compile(dialect=dialect))
            arrays.append(f"CAST(:{name} AS {base}[])")
            selected.append(f"t.{name}")
    return sql_text(
        f"INSERT INTO {m.Rationale.__tablename__} ({', '.join(names)}) "
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(arrays)}) AS t({', '.join(names)}) "
        f"ON CONFLICT ({', '.join(CONFLICT_KEY)}) DO NOTHING"
    )


_INSERT = _unnest_insert()


# One Python type per array: the driver refuses lists that mix e.g. int and float.
def _converter(name: str) -> Callable[[Any], Any]:
    column_type = m.Rationale.__table__.c[name].type
    if isinstance(column_type, sqltypes.JSON):
        return lambda v: json.dumps(list(v or []))
    python_type = column_type.python_type
    return lambda v: None if v is None else python_type(v)


_CONVERTERS = {name: _converter(name) for name in (*REQUIRED_COLUMNS, *COLUMN_DEFAULTS)}


def upsert_rationales(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows (Rationale column names) in multi-row batches; rows already stored are left as they are.

    The unique key (job, example, teacher, sample) makes a re-delivered chunk a no-op. Returns how many
    rows were new.
    """
    inserted = 0
    for start in range(0, len(rows), BATCH):
        batch = [_complete(row) for row in rows[start : start + BATCH]]
        columns = {name: [convert(row[name]) for row in batch] for name, convert in _CONVERTERS.items()}
        result = session.execute(_INSERT, columns)
        inserted += result.rowcount  # type: ignore[attr-defined]
    return inserted


_INSERT_RETURNING = sql_text(_INSERT.text + " RETURNING " + ", ".join(CONFLICT_KEY))


def insert_new_rationales(session: Session, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """`upsert_rationales` that tells which rows were new: their (job, example, teacher, sample) keys."""
    new: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), BATCH):
        batch = [_complete(row) for row in rows[start : start + BATCH]]
        columns = {name: [convert(row[name]) for row in batch] for name, convert in _CONVERTERS.items()}
        new.extend(tuple(key) for key in session.execute(_INSERT_RETURNING, columns))
    return new


def record_failure(
    session: Session,
    job_id: str,
    example_id: int,
    teacher_id: int,
    sample_index: int,
    error: str,
    attempts: int,
) -> bool:
    """Remember that an item gave up after `attempts` tries (a later failure of it overwrites this one);
    whether this call recorded it first (one atomic `INSERT ... ON CONFLICT ... RETURNING`)."""
    stmt = insert(m.RationaleFailure).values(
        job_id=job_id,
        example_id=example_id,
        teacher_id=teacher_id,
        sample_index=sample_index,
        error=error,
        attempts=attempts,
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=list(CONFLICT_KEY),
        set_={"error": stmt.excluded.error, "attempts": stmt.excluded.attempts},
    )
    # PostgreSQL: xmax is 0 on a freshly inserted row, the updating transaction's id on an updated one.
    return bool(session.scalar(upsert.returning(literal_column("xmax = 0"))))


class RationaleFilter(BaseModel):
    """Which of a job's rationales to list: each set field narrows; `after` + `limit` page by id."""

    teacher: str | None = Field(default=None, max_length=100, description="Only this teacher's.")
    truncated: bool | None = Field(default=None, description="Only truncated (true) or complete ones.")
    agrees_with_gold: bool | None = Field(default=None, description="Only ones whose answer agrees (or not).")
    example_id: str | None = Field(default=None, max_length=200, description="Only this example's.")
    after: int | None = Field(default=None, ge=0, description="`last_id` of the previous page.")
    limit: int = Field(default=50, ge=1, le=500)


def list_rationales(session: Session, job_id: str, query: RationaleFilter) -> tuple[list[Row[Any]], bool]:
    """A page of the job's rationales in id order, and whether more follow.

    Each row has the Rationale columns, with `teacher` (its name) and `example_id` (the example's
    external id) in place of the foreign keys.
    """
    r = m.Rationale
    columns = [c for c in r.__table__.c if c.name not in ("teacher_id", "example_id")]
    stmt = (
        select(*columns, m.Teacher.name.label("teacher"), m.Example.external_id.label("example_id"))
        .join(m.Teacher, m.Teacher.id == r.teacher_id)
        .join(m.Example, m.Example.id == r.example_id)
        .where(r.job_id == job_id)
        .order_by(r.id)
    )
    conditions = (
        (m.Teacher.name, query.teacher),
        (r.truncated, query.truncated),
        (r.agrees_with_gold, query.agrees_with_gold),
        (m.Example.external_id, query.example_id),
    )
    stmt = stmt.where(*(column == value for column, value in conditions if value is not None))
    if query.after is not None:
        stmt = stmt.where(r.id > query.after)
    rows = list(session.execute(stmt.limit(query.limit + 1)))
    return rows[: query.limit], len(rows) > query.limit


_ExportSelect = Select[str, str, str, bool, bool | None, int, int, int]


def _export_query(session: Session, job_id: str, teacher_names: list[str] | None) -> _ExportSelect:
    """The SELECT of a job's lines in export order, with its order key (example, teacher position,
    sample) as the last three columns. Raises LookupError for an unknown job or teacher."""
    if session.get(m.RationaleJob, job_id) is None:
        raise LookupError(f"no rationale job {job_id!r}")
    position: ColumnElement[int] = m.Teacher.id.expression
    if teacher_names:
        job_teachers = set(
            session.scalars(
                select(m.Teacher.name)
                .join(m.Rationale, m.Rationale.teacher_id == m.Teacher.id)
                .where(m.Rationale.job_id == job_id)
                .distinct()
            )
        ) | set(
            session.scalars(select(m.Teacher.name).join(m.JobTeacher).where(m.JobTeacher.job_id == job_id))
        )
        unknown = [name for name in teacher_names if name not in job_teachers]
        if unknown:
            raise LookupError(
                f"job {job_id!r} has no teacher(s) {unknown} "
                f"(its teachers: {', '.join(sorted(job_teachers))})"
            )
        position = case({name: i for i, name in enumerate(teacher_names)}, value=m.Teacher.name)
    stmt = (
        select(
            m.Example.external_id,
            m.Teacher.name,
            m.Rationale.text,
            m.Rationale.truncated,
            m.Rationale.agrees_with_gold,
            m.Rationale.example_id,
            position.label("position"),
            m.Rationale.sample_index,
        )
        .join(m.Example, m.Rationale.example_id == m.Example.id)
        .join(m.Teacher, m.Rationale.teacher_id == m.Teacher.id)
        .where(m.Rationale.job_id == job_id)
        .order_by(m.Rationale.example_id, position, m.Rationale.sample_index)
    )
    if teacher_names:
        stmt = stmt.where(m.Teacher.name.in_(teacher_names))
    return stmt


def export_lines(
    session: Session, job_id: str, teacher_names: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """A job's rationales as exchange-format lines, in dataset order, streamed.

    Within an example, teachers come in the order of `teacher_names` (else registration order), then
    samples in order. Raises LookupError for an unknown job or a teacher the job does not have.
    """
    stmt = _export_query(session, job_id, teacher_names).execution_options(yield_per=BATCH)
    return (_line(row) for row in session.execute(stmt))


def export_pages(
    database_url: str, job_id: str, teacher_names: list[str] | None = None, page: int = BATCH
) -> Iterator[dict[str, Any]]:
    """`export_lines`, read `page` lines at a time, each page in a transaction of its own: between
    pages (while a slow reader takes its time) no database connection is held."""
    after: tuple[int, int, int] | None = None
    while True:
        with session_scope(database_url) as session:
            stmt = _export_query(session, job_id, teacher_names)
            if after is not None:
                order = stmt.selected_columns
                stmt = stmt.where(tuple_(order.example_id, order.position, order.sample_index) > after)
            rows = session.execute(stmt.limit(page)).all()
        yield from (_line(row) for row in rows)
        if len(rows) < page:
            return
        last = rows[-1]
        after = (last.example_id, last.position, last.sample_index)


def _line(row: Sequence[Any]) -> dict[str, Any]:
    ex_id, teacher, text, truncated, agrees = row[:5]
    return {
        "id": ex_id,
        "teacher": teacher,
        "rationale": text,
        "truncated": truncated,
        "agrees_with_gold": agrees,
    }


def dump_line(line: Mapping[str, Any]) -> str:
    """One exchange-format line as written to a file (UTF-8 JSON, field order as in ../shared/rationales)."""
    return json.dumps({k: line.get(k) for k in LINE_FIELDS}, ensure_ascii=False)


# --- import -------------------------------------------------------------------------------------------
# A file's lines are read and checked by `rationales.exchange` (the offline GPU run reads them too).


def _import_target(
    session: Session, dataset: str, split: str, teacher_map: dict[str, str], where: str
) -> ImportTarget:
    """The split the file's ids must belong to; RationaleFileError if it holds no examples."""
    ds = find_dataset(session, dataset)
    rows = [] if ds is None else session.scalars(split_query(ds.id, split)).all()
    if ds is None or not rows:
        hint = f"import them first (distillery data import-shared {dataset} --splits {split})"
        raise RationaleFileError(
            [Problem(where, 0, f"dataset '{dataset}' has no examples in split '{split}'; {hint}")]
        )
    examples = {row.external_id: (row.id, to_record(row)) for row in rows}
    return ImportTarget(dataset, split, ds.id, examples, teacher_map)


def _first_lines(lines: Sequence[RationaleLine]) -> dict[str, RationaleLine]:
    """Each teacher's first line, teachers in order of appearance."""
    first: dict[str, RationaleLine] = {}
    for line in lines:
        first.setdefault(line.teacher, line)
    return first


def _check_teachers(session: Session, first_lines: dict[str, RationaleLine], where: str) -> None:
    """RationaleFileError if a name the file's teachers would take belongs to a non-precomputed teacher."""
    problems = []
    for name, line in first_lines.items():
        existing = session.scalars(select(m.Teacher).where(m.Teacher.name == name)).one_or_none()
        if existing is not None and existing.backend != "precomputed":
            problems.append(
                Problem(
                    where,
                    line.lineno,
                    f"teacher '{name}' is registered with backend '{existing.backend}'; map the file's "
                    f"'{line.source_teacher}' to another name (teacher map)",
                )
            )
    if problems:
        raise RationaleFileError(problems)


def _import_key(target: ImportTarget, digest: str) -> str:
    material = json.dumps([target.dataset, target.split, digest, sorted(target.teacher_map.items())])
    return "import:" + hashlib.sha256(material.encode()).hexdigest()


def _import_job(
    session: Session, job_id: str | None, key: str, target: ImportTarget, params: Mapping[str, object]
) -> tuple[m.RationaleJob, bool]:
    """The job the file's lines belong to (created if new) and whether it was created now."""
    now = datetime.now(UTC)
    values = {
        "kind": "import",
        "status": "completed",
        "dataset_id": target.dataset_id,
        "split": target.split,
        "params": params,
        "started_at": now,
        "finished_at": now,
    }
    if job_id is not None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", job_id):
            raise ValueError(f"job id {job_id!r} is not accepted (1-32 letters, digits, '_' or '-')")
        by_id = (
            insert(m.RationaleJob).values(id=job_id, **values).on_conflict_do_nothing(index_elements=["id"])
        )
        created = session.execute(by_id.returning(m.RationaleJob.id)).scalar_one_or_none() is not None
        job = session.get(m.RationaleJob, job_id, populate_existing=True)
    else:
        by_key = insert(m.RationaleJob).values(id=m.new_id(), idempotency_key=key, **values)
        by_key = by_key.on_conflict_do_nothing(index_elements=["idempotency_key"])
        created = session.execute(by_key.returning(m.RationaleJob.id)).scalar_one_or_none() is not None
        job = session.scalars(select(m.RationaleJob).where(m.RationaleJob.idempotency_key == key)).one()
    assert job is not None
    if job.kind != "import":
        # A generation job's progress counts what its teachers still owe; an import would overwrite them.
        raise ValueError(f"job {job.id!r} is a {job.kind} job; rationale files are imported into import jobs")
    if job.dataset_id != target.dataset_id or job.split != target.split:
        raise ValueError(f"job {job.id!r} belongs to another dataset/split; import into a new job instead")
    return job, created


def _precomputed_teacher(session: Session, name: str, source_name: str, path: Path) -> m.Teacher:
    from distillery.teachers.registry import row_values

    spec = TeacherSpec(name=name, backend="precomputed", base_url=path.resolve().as_uri(), model=source_name)
    # Created once; a later import of another file reuses the teacher without rewriting its configuration.
    stmt = insert(m.Teacher).values(**row_values(spec)).on_conflict_do_nothing(index_elements=["name"])
    session.execute(stmt)
    return session.scalars(select(m.Teacher).where(m.Teacher.name == name)).one()


def _rationale_rows(
    job_id: str, lines: Sequence[RationaleLine], teacher_ids: dict[str, int]
) -> list[dict[str, Any]]:
    """The lines as rationale rows: samples numbered per (example, teacher) in file order."""
    rows: list[dict[str, Any]] = []
    samples: dict[tuple[int, str], list[str]] = {}
    for line in lines:
        earlier = samples.setdefault((line.example_row, line.teacher), [])
        rows.append(
            {
                "job_id": job_id,
                "example_id": line.example_row,
                "teacher_id": teacher_ids[line.teacher],
                "sample_index": len(earlier),
                "text": line.text,
                "truncated": line.truncated,
                "agrees_with_gold": line.agrees,
                "duplicate": is_duplicate(line.text, earlier),
            }
        )
        earlier.append(line.text)
    return rows


def import_rationale_file(
    session: Session,
    path: str | Path,
    dataset: str,
    split: str,
    teacher_map: dict[str, str] | None = None,
    job_id: str | None = None,
) -> ImportSummary:
    """Store a rationale file as the output of precomputed teachers (one per distinct `teacher` value).

    The whole file is checked before anything is written (RationaleFileError lists every problem).
    Re-importing the same content reuses its job and adds nothing. `truncated` / `agrees_with_gold` are
    taken from the file where given, computed with distillery.rationales.checks otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rationale file not found: {path}")
    content = path.read_bytes()
    target = _import_target(session, dataset, split, dict(teacher_map or {}), str(path))
    lines = parse_rationale_file(content, str(path), target)
    first_lines = _first_lines(lines)
    _check_teachers(session, first_lines, str(path))

    digest = hashlib.sha256(content).hexdigest()
    params = {
        "source": str(path),
        "sha256": digest,
        "teacher_map": target.teacher_map,
        "teachers": list(first_lines),
    }
    job, created = _import_job(session, job_id, _import_key(target, digest), target, params)
    teacher_ids = {
        name: _precomputed_teacher(session, name, line.source_teacher, path).id
        for name, line in first_lines.items()
    }
    inserted = upsert_rationales(session, _rationale_rows(job.id, lines, teacher_ids))
    _refresh_counts(session, job, list(teacher_ids.values()))
    return ImportSummary(
        job_id=job.id,
        dataset=dataset,
        split=split,
        path=str(path),
        lines=len(lines),
        inserted=inserted,
        teachers=dict(Counter(line.teacher for line in lines)),
        created_job=created,
    )


def _refresh_counts(session: Session, job: m.RationaleJob, teacher_ids: Sequence[int]) -> None:
    """Per-teacher done/total of an import job = what it holds (an import has nothing left to do)."""
    counts = dict(
        session.execute(
            select(m.Rationale.teacher_id, func.count())
            .where(m.Rationale.job_id == job.id, m.Rationale.teacher_id.in_(list(teacher_ids)))
            .group_by(m.Rationale.teacher_id)
        ).all()
    )
    for teacher_id in teacher_ids:
        stmt = insert(m.JobTeacher).values(
            job_id=job.id,
            teacher_id=teacher_id,
            total=counts.get(teacher_id, 0),
            done=counts.get(teacher_id, 0),
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["job_id", "teacher_id"],
                set_={"total": stmt.excluded.total, "done": stmt.excluded.done},
            )
        )
    job.total = (
        session.scalar(
            select(func.coalesce(func.sum(m.JobTeacher.total), 0)).where(m.JobTeacher.job_id == job.id)
        )
        or 0
    )


# --- stats --------------------------------------------------------------------------------------------


def _pct(part: int, whole: int) -> float | None:
    return None if not whole else round(100.0 * part / whole, 2)


def _rounded(value: Decimal | float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def teacher_stats(session: Session, teacher_name: str | None = None) -> list[dict[str, Any]]:
    """Per teacher over all its rationales: count, truncation/agreement/disagreement %, lengths, speed.

    `tokens_per_s` is completion tokens over request latency (what one request sees, not server throughput).
    """
    r = m.Rationale
    timed = (r.completion_tokens.is_not(None)) & (r.latency_ms > 0)
    stmt = (
        select(
            m.Teacher.name,
            m.Teacher.backend,
            func.count(r.id).label("n"),
            func.count(r.id).filter(r.truncated.is_(True)).label("truncated"),
            func.count(r.id).filter(r.agrees_with_gold.is_(True)).label("agree"),
            func.count(r.id).filter(r.agrees_with_gold.is_(False)).label("disagree"),
            func.count(r.id).filter(r.duplicate.is_(True)).label("duplicate"),
            func.avg(func.length(r.text)).label("chars"),
            func.avg(r.completion_tokens).label("tokens"),
            func.sum(r.completion_tokens).filter(timed).label("timed_tokens"),
            func.sum(cast(r.latency_ms, Float)).filter(timed).label("timed_ms"),
        )
        .select_from(m.Teacher)
        .outerjoin(r, r.teacher_id == m.Teacher.id)
        .group_by(m.Teacher.id)
        .order_by(m.Teacher.name)
    )
    if teacher_name is not None:
        stmt = stmt.where(m.Teacher.name == teacher_name)
    return [
        {
            "teacher": row.name,
            "backend": row.backend,
            "count": row.n,
            "truncated_pct": _pct(row.truncated, row.n),
            "agrees_pct": _pct(row.agree, row.n),
            "disagrees_pct": _pct(row.disagree, row.n),
            "duplicate_pct": _pct(row.duplicate, row.n),
            "mean_chars": _rounded(row.chars, 1),
            "mean_completion_tokens": _rounded(row.tokens, 1),
            "tokens_per_s": (
                round(float(row.timed_tokens) / (float(row.timed_ms) / 1000.0), 2)
                if row.timed_tokens and row.timed_ms
                else None
            ),
        }
        for row in session.execute(stmt)
    ]
