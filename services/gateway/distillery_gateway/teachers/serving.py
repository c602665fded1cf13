"""Teacher registration, listing and statistics behind the routes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from distillery.config import Settings
from distillery.datasets import SAMPLES_DIR
from distillery.store import models as m
from distillery.store import rationales as rat_store
from distillery.teachers import registry
from distillery_gateway.errors import APIError
from distillery_gateway.teachers import protocol as p

# What each backend cannot do without (the client would refuse it at the first call, in a worker).
REQUIRED = {"openai": ("base_url", "model"), "tgi": ("base_url",), "precomputed": ("base_url",)}


def view(row: m.Teacher) -> p.Teacher:
    return p.Teacher.model_validate(row)


def precomputed_roots(settings: Settings) -> list[Path]:
    """Where precomputed teachers may read: DISTILLERY_PRECOMPUTED_ROOTS, else SHARED_DIR, HOME and the
    bundled samples."""
    given = [Path(part.strip()) for part in settings.precomputed_roots.split(",") if part.strip()]
    return given or [settings.shared_dir, settings.home, SAMPLES_DIR]


class TeacherService:
    """Teacher operations; built once per app, each call given the request's database session."""

    def __init__(self, settings: Settings):
        self.hosts = settings.teacher_hosts
        self.roots = precomputed_roots(settings)

    def register(self, session: Session, spec: p.CreateTeacher) -> tuple[p.Teacher, bool]:
        for field in REQUIRED.get(spec.backend, ()):
            if not getattr(spec, field):
                raise APIError(
                    422,
                    f"{field}: backend '{spec.backend}' needs '{field}'",
                    param=field,
                    code="missing_field",
                )
        try:
            registry.check_location(spec, self.hosts, self.roots)
        except ValueError as exc:
            raise APIError(422, str(exc), param="base_url", code="base_url_not_allowed") from None
        existed = registry.get_teacher_by_name(session, spec.name) is not None
        try:
            row = registry.upsert_teacher(session, spec)
        except ValueError as exc:
            param = "prefix" if "prefix" in str(exc) else "template_version"
            raise APIError(422, f"{param}: {exc}", param=param, code="invalid_value") from None
        return view(row), not existed

    def get(self, session: Session, name: str) -> m.Teacher:
        row = registry.get_teacher_by_name(session, name)
        if row is None:
            known = [t.name for t in registry.list_teachers(session)]
            raise APIError(
                404,
                f"no teacher '{name}' (registered: {', '.join(known) or 'none'})",
                param="name",
                code="teacher_not_found",
            )
        return row

    def list(self, session: Session) -> p.TeacherList:
        return p.TeacherList(data=[view(row) for row in registry.list_teachers(session)])

    def stats(self, session: Session, name: str) -> p.TeacherStats:
        self.get(session, name)
        rows = rat_store.teacher_stats(session, name)
        return p.TeacherStats(**rows[0])
