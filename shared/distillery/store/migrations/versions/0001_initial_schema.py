"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 01:03:32.616945
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column("scopes", postgresql.JSONB(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("key_id", name=op.f("uq_api_key_key_id")),
    )
    op.create_table(
        "dataset",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("num_options", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset")),
        sa.UniqueConstraint("name", name=op.f("uq_dataset_name")),
    )
    op.create_table(
        "teacher",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("backend", sa.String(length=30), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("api_style", sa.String(length=20), nullable=False),
        sa.Column("prefix", sa.String(length=200), nullable=False),
        sa.Column("template_version", sa.String(length=40), nullable=True),
        sa.Column("params", postgresql.JSONB(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teacher")),
        sa.UniqueConstraint("name", name=op.f("uq_teacher_name")),
    )
    op.create_table(
        "training_run",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("config", postgresql.JSONB(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("loss_curve", postgresql.JSONB(), nullable=False),
        sa.Column("metrics", postgresql.JSONB(), nullable=False),
        sa.Column("checkpoint_dir", sa.Text(), nullable=True),
        sa.Column("output_dir", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_run")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_training_run_idempotency_key")),
    )
    op.create_table(
        "example",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=20), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("options", postgresql.JSONB(), nullable=False),
        sa.Column("answer", sa.Integer(), nullable=False),
        sa.Column("context", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["dataset.id"], name=op.f("fk_example_dataset_id_dataset"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_example")),
        sa.UniqueConstraint("dataset_id", "external_id", name=op.f("uq_example_dataset_id_external_id")),
    )
    op.create_index("ix_example_dataset_split", "example", ["dataset_id", "split"], unique=False)
    op.create_table(
        "model",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=True),
        sa.Column("training_run_id", sa.String(length=32), nullable=True),
        sa.Column("metrics", postgresql.JSONB(), nullable=False),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["training_run_id"],
            ["training_run.id"],
            name=op.f("fk_model_training_run_id_training_run"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_name_version")),
    )
    op.create_table(
        "rationale_job",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=20), nullable=False),
        sa.Column("params", postgresql.JSONB(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["dataset.id"], name=op.f("fk_rationale_job_dataset_id_dataset")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rationale_job")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_rationale_job_idempotency_key")),
    )
    op.create_table(
        "job_teacher",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("teacher_id", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["rationale_job.id"],
            name=op.f("fk_job_teacher_job_id_rationale_job"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["teacher_id"], ["teacher.id"], name=op.f("fk_job_teacher_teacher_id_teacher")
        ),
        sa.PrimaryKeyConstraint("job_id", "teacher_id", name=op.f("pk_job_teacher")),
    )
    op.create_table(
        "rationale",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("example_id", sa.BigInteger(), nullable=False),
        sa.Column("teacher_id", sa.Integer(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(length=30), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("template_version", sa.String(length=40), nullable=True),
        sa.Column("incontext_ids", postgresql.JSONB(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("agrees_with_gold", sa.Boolean(), nullable=True),
        sa.Column("duplicate", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["example_id"], ["example.id"], name=op.f("fk_rationale_example_id_example"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["rationale_job.id"],
            name=op.f("fk_rationale_job_id_rationale_job"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["teacher_id"], ["teacher.id"], name=op.f("fk_rationale_teacher_id_teacher")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rationale")),
        sa.UniqueConstraint(
            "job_id",
            "example_id",
            "teacher_id",
            "sample_index",
            name=op.f("uq_rationale_job_id_example_id_teacher_id_sample_index"),
        ),
    )
    op.create_index("ix_rationale_teacher_example", "rationale", ["teacher_id", "example_id"], unique=False)
    op.create_table(
        "rationale_failure",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("example_id", sa.BigInteger(), nullable=False),
        sa.Column("teacher_id", sa.Integer(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["example_id"],
            ["example.id"],
            name=op.f("fk_rationale_failure_example_id_example"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["rationale_job.id"],
            name=op.f("fk_rationale_failure_job_id_rationale_job"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["teacher_id"], ["teacher.id"], name=op.f("fk_rationale_failure_teacher_id_teacher")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rationale_failure")),
        sa.UniqueConstraint(
            "job_id",
            "example_id",
            "teacher_id",
            "sample_index",
            name=op.f("uq_rationale_failure_job_id_example_id_teacher_id_sample_index"),
        ),
    )


def downgrade() -> None:
    op.drop_table("rationale_failure")
    op.drop_index("ix_rationale_teacher_example", table_name="rationale")
    op.drop_table("rationale")
    op.drop_table("job_teacher")
    op.drop_table("rationale_job")
    op.drop_table("model")
    op.drop_index("ix_example_dataset_split", table_name="example")
    op.drop_table("example")
    op.drop_table("training_run")
    op.drop_table("teacher")
    op.drop_table("dataset")
    op.drop_table("api_key")
