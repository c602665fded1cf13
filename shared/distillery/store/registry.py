"""The model registry: versions of students, one of them in stage `production` per name."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from distillery.store import models as m

STAGES = ("staging", "production", "archived")


def register_model(
    session: Session,
    name: str,
    path: str,
    *,
    base_model: str | None = None,
    training_run_id: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> m.Model:
    """Add the next version of `name` in stage `staging`."""
    # Serialise version numbering per name across concurrent registrations.
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"model:{name}"))))
    version = (session.scalar(select(func.max(m.Model.version)).where(m.Model.name == name)) or 0) + 1
    row = m.Model(
        name=name,
        version=version,
        path=path,
        base_model=base_model,
        training_run_id=training_run_id,
        metrics=metrics or {},
        stage="staging",
    )
    session.add(row)
    session.flush()
    return row


def get_model(session: Session, model_id: str) -> m.Model | None:
    return session.get(m.Model, model_id)


def list_models(session: Session, name: str | None = None) -> list[m.Model]:
    stmt = select(m.Model).order_by(m.Model.name, m.Model.version.desc())
    if name:
        stmt = stmt.where(m.Model.name == name)
    return list(session.scalars(stmt))


def production_model(session: Session, name: str | None = None) -> m.Model | None:
    """The newest-promoted production model (of `name`, or of any name)."""
    stmt = select(m.Model).where(m.Model.stage == "production")
    if name:
        stmt = stmt.where(m.Model.name == name)
    return session.scalars(stmt.order_by(m.Model.promoted_at.desc().nulls_last()).limit(1)).one_or_none()


def promote(session: Session, model_id: str) -> m.Model:
    """Make `model_id` the production version of its name; the previous one goes back to staging.

    Rollback is promoting the previous version again.
    """
    row = session.get(m.Model, model_id, with_for_update=True)
    if row is None:
        raise KeyError(model_id)
    session.execute(
        update(m.Model)
        .where(m.Model.name == row.name, m.Model.stage == "production", m.Model.id != row.id)
        .values(stage="staging")
    )
    row.stage = "production"
    row.promoted_at = datetime.now(UTC)
    session.flush()
    return row
