"""Teacher registration, listing and statistics behind the routes."""

from __future__ import annotations

from sqlalchemy.orm import Session

from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.teachers import registry
from distillery_gateway.errors import APIError
from distillery_gateway.teachers import protocol as p

# What each backend cannot do without (the client would refuse it at the first call, in a worker).
REQUIRED = {"openai": ("base_url", "model"), "tgi": ("base_url",), "precomputed": ("base_url",)}


def view(row: m.Teacher) -> p.Teacher:
    return p.Teacher(
        id=row.id,
        name=row.name,
        backend=row.backend,
        base_url=row.base_url,
        model=row.model,
        api_style=row.api_style,
        prefix=row.prefix,
        template_version=row.template_version,
        params=row.params or {},
        max_concurrency=row.max_concurrency,
        timeout_s=row.timeout_s,
        created_at=row.created_at,
    )


class TeacherService:
    """Teacher operations for one request's database session."""

    def __init__(self, session: Session):
        self.session = session

    def register(self, spec: p.CreateTeacher) -> tuple[p.Teacher, bool]:
        for field in REQUIRED.get(spec.backend, ()):
            if not getattr(spec, field):
                raise APIError(
                    422,
                    f"{field}: backend '{spec.backend}' needs '{field}'",
                    param=field,
                    code="missing_field",
                )
        existed = registry.get_teacher_by_name(self.session, spec.name) is not None
        try:
            row = registry.upsert_teacher(self.session, spec)
        except ValueError as exc:
            param = "prefix" if "prefix" in str(exc) else "template_version"
            raise APIError(422, f"{param}: {exc}", param=param, code="invalid_value") from None
        return view(row), not existed

    def get(self, name: str) -> m.Teacher:
        row = registry.get_teacher_by_name(self.session, name)
        if row is None:
            known = [t.name for t in registry.list_teachers(self.session)]
            raise APIError(
                404,
                f"no teacher '{name}' (registered: {', '.join(known) or 'none'})",
                param="name",
                code="teacher_not_found",
            )
        return row

    def list(self) -> p.TeacherList:
        return p.TeacherList(data=[view(row) for row in registry.list_teachers(self.session)])

    def stats(self, name: str) -> p.TeacherStats:
        self.get(name)
        rows = rat_store.teacher_stats(self.session, name)
        return p.TeacherStats(**rows[0])
