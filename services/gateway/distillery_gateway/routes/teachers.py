"""/v1/teachers: register and list teachers, and per-teacher rationale statistics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from distillery_gateway.deps import PrincipalDep, SessionDep, require_scope
from distillery_gateway.teachers import protocol as p
from distillery_gateway.teachers.serving import TeacherService, view

router = APIRouter(prefix="/v1/teachers", tags=["teachers"])

Name = Annotated[str, Path(min_length=1, max_length=100)]


@router.post("", response_model=p.Teacher, status_code=201, dependencies=[require_scope("jobs:write")])
def register_teacher(body: p.CreateTeacher, session: SessionDep) -> JSONResponse:
    """Register a teacher (201), or update the one with this name (200)."""
    teacher, created = TeacherService(session).register(body)
    return JSONResponse(teacher.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("", response_model=p.TeacherList)
def list_teachers(session: SessionDep, _: PrincipalDep) -> p.TeacherList:
    return TeacherService(session).list()


@router.get("/{name}", response_model=p.Teacher)
def get_teacher(name: Name, session: SessionDep, _: PrincipalDep) -> p.Teacher:
    return view(TeacherService(session).get(name))


@router.get("/{name}/stats", response_model=p.TeacherStats)
def teacher_stats(name: Name, session: SessionDep, _: PrincipalDep) -> p.TeacherStats:
    """Count, truncation/agreement/duplicate rates, mean length and speed over all its rationales."""
    return TeacherService(session).stats(name)
