"""Teacher configurations in the database, and the client that speaks each backend."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    return TeacherSpec.model_validate(
        {
            "name": row.name,
            "backend": row.backend,
            "base_url": row.base_url,
            "model": row.model,
            "api_style": row.api_style,
            "prefix": row.prefix,
            "template_version": row.template_version,
            "params": GenerationParams(**(row.params or {})),
            "max_concurrency": row.max_concurrency,
            "timeout_s": row.timeout_s,
        }
    )


def row_values(spec: TeacherSpec) -> dict[str, Any]:
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


def check_location(spec: TeacherSpec, hosts: str, roots: list[Path]) -> None:
    """ValueError (starting "base_url:") when `spec` would reach outside what this deployment allows.

    `hosts` is the allow-list of `DISTILLERY_TEACHER_HOSTS` (comma-separated; `.example.org` allows that
    domain); a precomputed teacher's file or folder must lie under one of `roots`. A teacher's secret is
    sent only to an allowed host, and a precomputed teacher reads only allowed files.
    """
    if not spec.base_url:
        return
    if spec.backend == "precomputed":
        from distillery.teachers.precomputed import local_path

        try:
            path = local_path(spec.base_url).resolve()
        except ValueError as exc:
            raise ValueError(f"base_url: {exc}") from None
        if not any(path.is_relative_to(root.resolve()) for root in roots):
            raise ValueError(
                f"base_url: {spec.base_url} is outside the folders precomputed teachers may read "
                "(DISTILLERY_PRECOMPUTED_ROOTS)"
            )
        return
    parsed = urlsplit(spec.base_url)
    host = (parsed.hostname or "").lower()
    allowed = [h.strip().lower() for h in hosts.split(",") if h.strip()]
    ok = any(host == h or (h.startswith(".") and host.endswith(h)) for h in allowed)
    if parsed.scheme not in ("http", "https") or not ok:
        raise ValueError(
            f"base_url: host {host or '(none)'!r} of {parsed.scheme or '(no scheme)'}:// URL is not on the "
            f"teacher allow-list (DISTILLERY_TEACHER_HOSTS: {', '.join(allowed) or 'empty'})"
        )


def upsert_teacher(session: Session, spec: TeacherSpec) -> m.Teacher:
    """Create the teacher `spec.name`, or bring its configuration to `spec` (same spec twice: no change)."""
    values = row_values(spec)
    stmt = insert(m.Teacher).values(**values)
    upsert = stmt.on_conflict_do_update(
        index_elements=["name"], set_={c: stmt.excluded[c] for c in _CONFIG_COLUMNS}
    ).returning(m.Teacher.id)
    teacher_id: int = session.execute(upsert).scalar_one()
    row = session.get(m.Teacher, teacher_id, populate_existing=True)
    assert row is not None
    return row


def get_teacher_by_name(session: Session, name: str) -> m.Teacher | None:
    return session.scalars(select(m.Teacher).where(m.Teacher.name == name)).one_or_none()


def list_teachers(session: Session) -> list[m.Teacher]:
    return list(session.scalars(select(m.Teacher).order_by(m.Teacher.name)))


def make_client(spec: TeacherSpec) -> TeacherClient:
    """The client for `spec.backend`. Clients hold connections: use one per event loop, then `aclose()`
    (or keep one per teacher in a `ClientPool`)."""
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


@dataclass
class _Pooled:
    spec: TeacherSpec
    client: TeacherClient
    users: int = 0
    stale: bool = False


class ClientPool:
    """Long-lived clients, one per teacher, for one event loop (a worker process keeps one).

    Building a client per chunk cost an HTTP client, an SSL context and cold connections each time; a
    pooled client keeps its connections (sized to the teacher's `max_concurrency`) across chunks. A
    teacher whose configuration changed gets a new client; the old one closes once its last user is done.
    Use it from its event loop's thread only.
    """

    def __init__(self) -> None:
        self._clients: dict[str, _Pooled] = {}

    @contextlib.asynccontextmanager
    async def client(self, spec: TeacherSpec) -> AsyncIterator[TeacherClient]:
        """The client for `spec` (ValueError for a teacher configured wrongly, as `make_client`)."""
        entry = self._clients.get(spec.name)
        if entry is None or entry.spec != spec:
            fresh = _Pooled(spec, make_client(spec))
            if entry is not None:
                entry.stale = True
                if not entry.users:
                    await entry.client.aclose()
            self._clients[spec.name] = entry = fresh
        entry.users += 1
        try:
            yield entry.client
        finally:
            entry.users -= 1
            if entry.stale and not entry.users:
                await entry.client.aclose()

    async def aclose(self) -> None:
        """Close every idle client (clients in use close when their last user is done)."""
        for name, entry in list(self._clients.items()):
            del self._clients[name]
            entry.stale = True
            if not entry.users:
                await entry.client.aclose()
