"""Teacher configurations in the database, and the client that speaks each backend."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from distillery.rationales.prompts import ANSWER_PREFIX, TEMPLATE_VERSION, get_template, teacher_prefix
from distillery.store import models as m
from distillery.teachers.base import BACKENDS, GenerationParams, TeacherClient, TeacherSpec

# Columns a re-registration may change; `name` is the identity.
_CONFIG_COLUMNS = (
    "backend",
    "base_url",
    "model",
    "api_style",
    "prefix",
    "template_version",
    "params",
    "max_concurrency",
    "timeout_s",
)


def spec_from_row(row: m.Teacher) -> TeacherSpec:
    """The TeacherSpec a stored teacher row describes."""
    return TeacherSpec(
        name=row.name,
        backend=row.backend,
        base_url=row.base_url,
        model=row.model,
        api_style=row.api_style,
        prefix=row.prefix,
        template_version=row.template_version,
        params=GenerationParams(**(row.params or {})),
        max_concurrency=row.max_concurrency,
        timeout_s=row.timeout_s,
    )


def row_values(spec: TeacherSpec) -> dict:
    """Column values for `spec`, with the defaults filled in (prefix, template version)."""
    prefix = spec.prefix if spec.prefix is not None else teacher_prefix(spec.name)
    if prefix == ANSWER_PREFIX:
        raise ValueError(f"prefix {prefix!r} is the answer task's; give teacher {spec.name!r} another prefix")
    version = spec.template_version
    if version is None and spec.backend != "precomputed":
        version = TEMPLATE_VERSION
    if version is not None and spec.backend != "precomputed":
        get_template(version)  # ValueError naming the known versions
    return {
        "name": spec.name,
        "backend": spec.backend,
        "base_url": spec.base_url,
        "model": spec.model,
        "api_style": spec.api_style,
        "prefix": prefix,
        "template_version": version,
        "params": spec.params.model_dump(),
        "max_concurrency": spec.max_concurrency,
        "timeout_s": spec.timeout_s,
    }


def upsert_teacher(session: Session, spec: TeacherSpec) -> m.Teacher:
    """Create the teacher `spec.name`, or bring its configuration to `spec` (same spec twice: no change)."""
    values = row_values(spec)
    stmt = insert(m.Teacher).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"], set_={c: stmt.excluded[c] for c in _CONFIG_COLUMNS}
    ).returning(m.Teacher.id)
    teacher_id = session.execute(stmt).scalar_one()
    row = session.get(m.Teacher, teacher_id, populate_existing=True)
    assert row is not None
    return row


def get_teacher_by_name(session: Session, name: str) -> m.Teacher | None:
    return session.scalars(select(m.Teacher).where(m.Teacher.name == name)).one_or_none()


def list_teachers(session: Session) -> list[m.Teacher]:
    return list(session.scalars(select(m.Teacher).order_by(m.Teacher.name)))


def make_client(spec: TeacherSpec) -> TeacherClient:
    """The client for `spec.backend`. Clients hold connections: use one per event loop, then `aclose()`."""
    if spec.backend == "openai":
        from distillery.teachers.openai_compat import OpenAICompatTeacher

        return OpenAICompatTeacher(spec)
    if spec.backend == "tgi":
        from distillery.teachers.tgi import TGITeacher

        return TGITeacher(spec)
    if spec.backend == "precomputed":
        from distillery.teachers.precomputed import PrecomputedTeacher

        return PrecomputedTeacher(spec)
    raise ValueError(f"unknown teacher backend {spec.backend!r} (accepted: {', '.join(BACKENDS)})")
