"""/v1/teachers: register and list teachers, and per-teacher rationale statistics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from distillery_gateway.deps import SessionDep, require_scope, serving
from distillery_gateway.teachers import protocol as p
from distillery_gateway.teachers.serving import TeacherService, view

# Reading teachers (their URLs and file paths) needs `jobs:read`; registering or changing one, `admin`.
router = APIRouter(prefix="/v1/teachers", tags=["teachers"])
READ = [require_scope("jobs:read")]

Teachers = Annotated[TeacherService, serving(TeacherService)]
Name = Annotated[str, Path(min_length=1, max_length=100)]


@router.post("", response_model=p.Teacher, status_code=201, dependencies=[require_scope("admin")])
def register_teacher(body: p.CreateTeacher, teachers: Teachers, session: SessionDep) -> JSONResponse:
    """Register a teacher (201), or update the one with this name (200)."""
    teacher, created = teachers.register(session, body)
    return JSONResponse(teacher.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("", response_model=p.TeacherList, dependencies=READ)
def list_teachers(teachers: Teachers, session: SessionDep) -> p.TeacherList:
    return teachers.list(session)


@router.get("/{name}", response_model=p.Teacher, dependencies=READ)
def get_teacher(name: Name, teachers: Teachers, session: SessionDep) -> p.Teacher:
    return view(teachers.get(session, name))


@router.get("/{name}/stats", response_model=p.TeacherStats, dependencies=READ)
def teacher_stats(name: Name, teachers: Teachers, session: SessionDep) -> p.TeacherStats:
    """Count, truncation/agreement/duplicate rates, mean length and speed over all its rationales."""
    return teachers.stats(session, name)
