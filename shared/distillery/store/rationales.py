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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Float, TextClause, case, cast, func, select
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.sql import sqltypes

from distillery.datasets import DatasetError, Problem
from distillery.rationales.checks import agrees_with_gold, is_duplicate, is_truncated
from distillery.records import Example
from distillery.store import models as m
from distillery.store.examples import find_dataset, to_record
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
    "truncated": False,
    "agrees_with_gold": None,
    "duplicate": False,
}
REQUIRED_COLUMNS = ("job_id", "example_id", "teacher_id", "text")
LINE_FIELDS = ("id", "teacher", "rationale", "truncated", "agrees_with_gold")


class RationaleFileError(DatasetError):
    """A rationale file was rejected whole; `problems` lists every bad line as `file:line: message`."""


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


def _complete(row: dict) -> dict:
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
    dialect = postgresql.dialect()
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
        f"INSERT INTO {table.name} ({', '.join(names)}) "
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(arrays)}) AS t({', '.join(names)}) "
        f"ON CONFLICT ({', '.join(CONFLICT_KEY)}) DO NOTHING"
    )


_INSERT = _unnest_insert()


# One Python type per array: the driver refuses lists that mix e.g. int and float.
def _converter(name: str):
    column_type = m.Rationale.__table__.c[name].type
    if isinstance(column_type, sqltypes.JSON):
        return lambda v: json.dumps(list(v or []))
    python_type = column_type.python_type
    return lambda v: None if v is None else python_type(v)


_CONVERTERS = {name: _converter(name) for name in (*REQUIRED_COLUMNS, *COLUMN_DEFAULTS)}


def upsert_rationales(session: Session, rows: list[dict]) -> int:
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


def record_failure(
    session: Session,
    job_id: str,
    example_id: int,
    teacher_id: int,
    sample_index: int,
    error: str,
    attempts: int,
) -> None:
    """Remember that an item gave up after `attempts` tries (a later failure of it overwrites this one)."""
    stmt = insert(m.RationaleFailure).values(
        job_id=job_id,
        example_id=example_id,
        teacher_id=teacher_id,
        sample_index=sample_index,
        error=error,
        attempts=attempts,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=list(CONFLICT_KEY),
        set_={"error": stmt.excluded.error, "attempts": stmt.excluded.attempts},
    )
    session.execute(stmt)


def export_lines(session: Session, job_id: str, teacher_names: list[str] | None = None) -> Iterator[dict]:
    """A job's rationales as exchange-format lines, in dataset order, streamed.

    Within an example, teachers come in the order of `teacher_names` (else registration order), then
    samples in order. Raises LookupError for an unknown job or a teacher the job does not have.
    """
    if session.get(m.RationaleJob, job_id) is None:
        raise LookupError(f"no rationale job {job_id!r}")
    position = m.Teacher.id
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
        )
        .join(m.Example, m.Rationale.example_id == m.Example.id)
        .join(m.Teacher, m.Rationale.teacher_id == m.Teacher.id)
        .where(m.Rationale.job_id == job_id)
        .order_by(m.Rationale.example_id, position, m.Rationale.sample_index)
        .execution_options(yield_per=BATCH)
    )
    if teacher_names:
        stmt = stmt.where(m.Teacher.name.in_(teacher_names))
    return _lines(session, stmt)


def _lines(session: Session, stmt) -> Iterator[dict]:
    for ex_id, teacher, text, truncated, agrees in session.execute(stmt):
        yield {
            "id": ex_id,
            "teacher": teacher,
            "rationale": text,
            "truncated": truncated,
            "agrees_with_gold": agrees,
        }


def dump_line(line: dict) -> str:
    """One exchange-format line as written to a file (UTF-8 JSON, field order as in ../shared/rationales)."""
    return json.dumps({k: line.get(k) for k in LINE_FIELDS}, ensure_ascii=False)


# --- import -------------------------------------------------------------------------------------------


@dataclass
class _Line:
    lineno: int
    example_row: int
    example: Example
    teacher: str  # name in the database (after teacher_map)
    source_teacher: str  # name in the file
    text: str
    truncated: bool | None
    has_truncated: bool
    agrees: bool | None
    has_agrees: bool


def _check_line(
    obj: object,
    lineno: int,
    where: str,
    examples: dict[str, tuple[int, Example]],
    teacher_map: dict[str, str],
    dataset: str,
    split: str,
) -> tuple[_Line | None, list[Problem]]:
    problems: list[Problem] = []

    def bad(message: str) -> None:
        problems.append(Problem(where, lineno, message))

    if not isinstance(obj, dict):
        bad(f"expected a JSON object, got {type(obj).__name__}")
        return None, problems
    for key in ("id", "teacher", "rationale"):
        if key not in obj:
            bad(f"missing required field '{key}' (required: id, teacher, rationale)")
    if problems:
        return None, problems
    ex_id, teacher, text = obj["id"], obj["teacher"], obj["rationale"]
    if isinstance(ex_id, int) and not isinstance(ex_id, bool):
        ex_id = str(ex_id)
    if not isinstance(ex_id, str) or not ex_id:
        bad("field 'id' must be a non-empty string")
    elif ex_id not in examples:
        bad(f"unknown id {ex_id!r} (not an example of dataset '{dataset}', split '{split}')")
    if not isinstance(teacher, str) or not teacher.strip():
        bad("field 'teacher' must be a non-empty string")
    else:
        mapped = teacher_map.get(teacher, teacher)
        if not _valid_name(mapped):
            bad(
                f"teacher name {mapped!r} is not accepted (letters, digits, '.', '_', '-'; at most 100; "
                "rename it with a teacher map)"
            )
    if not isinstance(text, str):
        bad("field 'rationale' must be a string")
    for flag in ("truncated", "agrees_with_gold"):
        if flag in obj and obj[flag] is not None and not isinstance(obj[flag], bool):
            bad(f"field '{flag}' must be true, false or null, got {obj[flag]!r}")
    if problems:
        return None, problems
    row_id, example = examples[ex_id]
    return (
        _Line(
            lineno=lineno,
            example_row=row_id,
            example=example,
            teacher=teacher_map.get(teacher, teacher),
            source_teacher=teacher,
            text=text,
            truncated=obj.get("truncated"),
            has_truncated=obj.get("truncated") is not None,
            agrees=obj.get("agrees_with_gold"),
            has_agrees="agrees_with_gold" in obj,
        ),
        [],
    )


def _valid_name(name: str) -> bool:
    try:
        TeacherSpec(name=name)
    except ValueError:
        return False
    return True


def parse_rationale_file(
    content: bytes,
    where: str,
    examples: dict[str, tuple[int, Example]],
    teacher_map: dict[str, str],
    dataset: str,
    split: str,
) -> list[_Line]:
    """Every line checked; RationaleFileError listing each problem as `file:line: message`."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RationaleFileError(
            [Problem(where, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    lines: list[_Line] = []
    problems: list[Problem] = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends, which splitlines breaks on.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        line, found = _check_line(obj, lineno, where, examples, teacher_map, dataset, split)
        problems.extend(found)
        if line is not None:
            lines.append(line)
    if not lines and not problems:
        problems.append(Problem(where, 0, "file holds no rationales"))
    if problems:
        raise RationaleFileError(problems)
    return lines


def _split_examples(session: Session, dataset: str, split: str) -> dict[str, tuple[int, Example]]:
    ds = find_dataset(session, dataset)
    if ds is None:
        return {}
    rows = session.scalars(
        select(m.Example)
        .where(m.Example.dataset_id == ds.id, m.Example.split == split)
        .order_by(m.Example.id)
    )
    return {row.external_id: (row.id, to_record(row)) for row in rows}


def _import_key(dataset: str, split: str, digest: str, teacher_map: dict[str, str]) -> str:
    material = json.dumps([dataset, split, digest, sorted(teacher_map.items())])
    return "import:" + hashlib.sha256(material.encode()).hexdigest()


def _import_job(
    session: Session, job_id: str | None, key: str, dataset_id: int, split: str, params: dict
) -> tuple[m.RationaleJob, bool]:
    now = datetime.now(UTC)
    values = {
        "kind": "import",
        "status": "completed",
        "dataset_id": dataset_id,
        "split": split,
        "params": params,
        "started_at": now,
        "finished_at": now,
    }
    if job_id is not None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", job_id):
            raise ValueError(f"job id {job_id!r} is not accepted (1-32 letters, digits, '_' or '-')")
        stmt = insert(m.RationaleJob).values(id=job_id, **values)
        stmt = stmt.on_conflict_do_nothing(index_elements=["id"]).returning(m.RationaleJob.id)
        created = session.execute(stmt).scalar_one_or_none() is not None
        job = session.get(m.RationaleJob, job_id, populate_existing=True)
    else:
        stmt = insert(m.RationaleJob).values(id=m.new_id(), idempotency_key=key, **values)
        stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(m.RationaleJob.id)
        created = session.execute(stmt).scalar_one_or_none() is not None
        job = session.scalars(select(m.RationaleJob).where(m.RationaleJob.idempotency_key == key)).one()
    assert job is not None
    if job.kind != "import":
        # A generation job's progress counts what its teachers still owe; an import would overwrite them.
        raise ValueError(f"job {job.id!r} is a {job.kind} job; rationale files are imported into import jobs")
    if job.dataset_id != dataset_id or job.split != split:
        raise ValueError(f"job {job.id!r} belongs to another dataset/split; import into a new job instead")
    return job, created


def _precomputed_teacher(session: Session, name: str, source_name: str, path: Path) -> m.Teacher:
    from distillery.teachers.registry import row_values

    spec = TeacherSpec(name=name, backend="precomputed", base_url=path.resolve().as_uri(), model=source_name)
    # Created once; a later import of another file reuses the teacher without rewriting its configuration.
    stmt = insert(m.Teacher).values(**row_values(spec)).on_conflict_do_nothing(index_elements=["name"])
    session.execute(stmt)
    return session.scalars(select(m.Teacher).where(m.Teacher.name == name)).one()


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
    teacher_map = dict(teacher_map or {})
    content = path.read_bytes()
    examples = _split_examples(session, dataset, split)
    if not examples:
        raise RationaleFileError(
            [
                Problem(
                    str(path),
                    0,
                    f"dataset '{dataset}' has no examples in split '{split}'; import them first "
                    f"(distillery data import-shared {dataset} --splits {split})",
                )
            ]
        )
    lines = parse_rationale_file(content, str(path), examples, teacher_map, dataset, split)

    first_line: dict[str, _Line] = {}
    for line in lines:
        first_line.setdefault(line.teacher, line)
    problems = []
    for name, line in first_line.items():
        existing = session.scalars(select(m.Teacher).where(m.Teacher.name == name)).one_or_none()
        if existing is not None and existing.backend != "precomputed":
            problems.append(
                Problem(
                    str(path),
                    line.lineno,
                    f"teacher '{name}' is registered with backend '{existing.backend}'; map the file's "
                    f"'{line.source_teacher}' to another name (teacher map)",
                )
            )
    if problems:
        raise RationaleFileError(problems)

    digest = hashlib.sha256(content).hexdigest()
    dataset_id = find_dataset(session, dataset).id  # type: ignore[union-attr]
    params = {"source": str(path), "sha256": digest, "teacher_map": teacher_map, "teachers": list(first_line)}
    job, created = _import_job(
        session, job_id, _import_key(dataset, split, digest, teacher_map), dataset_id, split, params
    )
    teachers = {
        name: _precomputed_teacher(session, name, line.source_teacher, path)
        for name, line in first_line.items()
    }

    rows: list[dict] = []
    samples: dict[tuple[int, str], list[str]] = {}
    for line in lines:
        earlier = samples.setdefault((line.example_row, line.teacher), [])
        rows.append(
            {
                "job_id": job.id,
                "example_id": line.example_row,
                "teacher_id": teachers[line.teacher].id,
                "sample_index": len(earlier),
                "text": line.text,
                "truncated": line.truncated if line.has_truncated else is_truncated(line.text),
                "agrees_with_gold": line.agrees
                if line.has_agrees
                else agrees_with_gold(line.text, line.example),
                "duplicate": is_duplicate(line.text, earlier),
            }
        )
        earlier.append(line.text)
    inserted = upsert_rationales(session, rows)
    _refresh_counts(session, job, [t.id for t in teachers.values()])
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
    job.total = session.scalar(
        select(func.coalesce(func.sum(m.JobTeacher.total), 0)).where(m.JobTeacher.job_id == job.id)
    )


# --- stats --------------------------------------------------------------------------------------------


def _pct(part, whole) -> float | None:
    return None if not whole else round(100.0 * float(part) / float(whole), 2)


def teacher_stats(session: Session, teacher_name: str | None = None) -> list[dict]:
    """Per teacher over all its rationales: count, truncation/agreement/disagreement %, lengths, speed.

    `tokens_per_s` is completion tokens over request latency (what one request sees, not server throughput).
    """
    r = m.Rationale
    timed = (r.completion_tokens.is_not(None)) & (r.latency_ms > 0)
    stmt = (
        select(
            m.Teacher.name,
            m.Teacher.backend,
            func.count(r.id),
            func.count(r.id).filter(r.truncated.is_(True)),
            func.count(r.id).filter(r.agrees_with_gold.is_(True)),
            func.count(r.id).filter(r.agrees_with_gold.is_(False)),
            func.count(r.id).filter(r.duplicate.is_(True)),
            func.avg(func.length(r.text)),
            func.avg(r.completion_tokens),
            func.sum(r.completion_tokens).filter(timed),
            func.sum(cast(r.latency_ms, Float)).filter(timed),
        )
        .select_from(m.Teacher)
        .outerjoin(r, r.teacher_id == m.Teacher.id)
        .group_by(m.Teacher.id)
        .order_by(m.Teacher.name)
    )
    if teacher_name is not None:
        stmt = stmt.where(m.Teacher.name == teacher_name)
    stats = []
    for (
        name,
        backend,
        n,
        trunc,
        agree,
        disagree,
        dup,
        chars,
        tokens,
        timed_tokens,
        timed_ms,
    ) in session.execute(stmt):
        stats.append(
            {
                "teacher": name,
                "backend": backend,
                "count": n,
                "truncated_pct": _pct(trunc, n),
                "agrees_pct": _pct(agree, n),
                "disagrees_pct": _pct(disagree, n),
                "duplicate_pct": _pct(dup, n),
                "mean_chars": None if chars is None else round(float(chars), 1),
                "mean_completion_tokens": None if tokens is None else round(float(tokens), 1),
                "tokens_per_s": (
                    round(float(timed_tokens) / (float(timed_ms) / 1000.0), 2)
                    if timed_tokens and timed_ms
                    else None
                ),
            }
        )
    return stats
