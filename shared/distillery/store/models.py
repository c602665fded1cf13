"""The data model (ARCHITECTURE.md): every service meets the others here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# JSONB on PostgreSQL, plain JSON elsewhere (keeps the models importable without a server).
Json = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Dataset(Timestamped, Base):
    __tablename__ = "dataset"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    source: Mapped[str | None] = mapped_column(Text)
    num_options: Mapped[int | None] = mapped_column(Integer)


class Example(Base):
    __tablename__ = "example"
    __table_args__ = (
        UniqueConstraint("dataset_id", "external_id"),
        Index("ix_example_dataset_split", "dataset_id", "split"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str] = mapped_column(String(200))
    question: Mapped[str] = mapped_column(Text)
    options: Mapped[list[str]] = mapped_column(Json)
    answer: Mapped[int] = mapped_column(Integer)
    context: Mapped[str | None] = mapped_column(Text)

    dataset: Mapped[Dataset] = relationship()


class Teacher(Timestamped, Base):
    """A teacher is configuration: how to reach it, how to prompt it, how the student names it."""

    __tablename__ = "teacher"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    backend: Mapped[str] = mapped_column(String(30))  # openai | tgi | precomputed
    base_url: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))
    api_style: Mapped[str] = mapped_column(String(20), default="chat")  # chat | completion
    prefix: Mapped[str] = mapped_column(String(200))
    template_version: Mapped[str | None] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    max_concurrency: Mapped[int] = mapped_column(Integer, default=4)
    timeout_s: Mapped[float] = mapped_column(Float, default=120.0)


class RationaleJob(Timestamped, Base):
    __tablename__ = "rationale_job"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(20), default="generate")  # generate | import
    status: Mapped[str] = mapped_column(String(30), default="pending")
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id"))
    split: Mapped[str] = mapped_column(String(20))
    params: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_by: Mapped[str | None] = mapped_column(String(32))  # key_id of the API key that made it
    total: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    teachers: Mapped[list[JobTeacher]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobTeacher.teacher_id"
    )


class JobTeacher(Base):
    """Per-teacher slice of a job: its share of the work and its progress counters."""

    __tablename__ = "job_teacher"

    job_id: Mapped[str] = mapped_column(ForeignKey("rationale_job.id", ondelete="CASCADE"), primary_key=True)
    teacher_id: Mapped[int] = mapped_column(ForeignKey("teacher.id"), primary_key=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)

    job: Mapped[RationaleJob] = relationship(back_populates="teachers")
    teacher: Mapped[Teacher] = relationship()


class JobItem:
    """The key of one item of a job's work: a sample of one teacher's rationale for one example.

    `sort_order` keeps these columns first in the table, where the migrations put them.
    """

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, sort_order=-1)
    job_id: Mapped[str] = mapped_column(ForeignKey("rationale_job.id", ondelete="CASCADE"), sort_order=-1)
    example_id: Mapped[int] = mapped_column(ForeignKey("example.id", ondelete="CASCADE"), sort_order=-1)
    teacher_id: Mapped[int] = mapped_column(ForeignKey("teacher.id"), sort_order=-1)
    sample_index: Mapped[int] = mapped_column(Integer, default=0, sort_order=-1)


class Rationale(JobItem, Base):
    __tablename__ = "rationale"
    __table_args__ = (
        UniqueConstraint("job_id", "example_id", "teacher_id", "sample_index"),
        Index("ix_rationale_teacher_example", "teacher_id", "example_id"),
    )

    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(30))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    template_version: Mapped[str | None] = mapped_column(String(40))
    incontext_ids: Mapped[list[str]] = mapped_column(Json, default=list)
    # Per shown demonstration: whether it carried a rationale (empty for rows stored before 0002).
    incontext_rationales: Mapped[list[bool]] = mapped_column(Json, default=list)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    agrees_with_gold: Mapped[bool | None] = mapped_column(Boolean)
    duplicate: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RationaleFailure(JobItem, Base):
    """An item that exhausted its retries; kept so a job can end `completed_with_errors`."""

    __tablename__ = "rationale_failure"
    __table_args__ = (UniqueConstraint("job_id", "example_id", "teacher_id", "sample_index"),)

    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TrainingRun(Timestamped, Base):
    __tablename__ = "training_run"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(30), default="queued")
    config: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    loss_curve: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    checkpoint_dir: Mapped[str | None] = mapped_column(Text)
    output_dir: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_by: Mapped[str | None] = mapped_column(String(32))  # key_id of the API key that made it
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Model(Timestamped, Base):
    """A registered student version; the gateway serves the one in stage `production`."""

    __tablename__ = "model"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str | None] = mapped_column(String(200))
    training_run_id: Mapped[str | None] = mapped_column(ForeignKey("training_run.id", ondelete="SET NULL"))
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    stage: Mapped[str] = mapped_column(String(20), default="staging")  # staging | production | archived
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Timestamped, Base):
    """Only a salted hash is stored; `key_id` is the public part shown in listings."""

    __tablename__ = "api_key"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    salt: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(Json, default=list)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
