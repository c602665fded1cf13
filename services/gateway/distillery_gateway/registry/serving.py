"""Registry logic: list, register (idempotent by name and path) and promote with a hot swap."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import cast

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session
from transformers import AutoConfig

from distillery.store import models as m
from distillery.store import registry
from distillery_gateway.engine.manager import ModelManager, version_id
from distillery_gateway.engine.watcher import announce
from distillery_gateway.errors import APIError
from distillery_gateway.registry.protocol import (
    RegisteredModel,
    RegisteredModelList,
    RegisterModelRequest,
    Stage,
)

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model")


def _epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def check_model_dir(path: str) -> str:
    """The absolute path of a loadable HF model directory; 422 naming `path` otherwise."""
    where = Path(path).expanduser()
    if not where.is_absolute():
        raise APIError(422, f"path: give an absolute path (got '{path}')", param="path", code="invalid_value")
    if not where.is_dir():
        raise APIError(
            422, f"path: '{path}' is not a directory on the gateway", param="path", code="invalid_value"
        )
    if not (where / "config.json").is_file():
        raise APIError(
            422,
            f"path: '{path}' has no config.json, so it is not an HF model directory",
            param="path",
            code="invalid_value",
        )
    if not any((where / f).is_file() for f in TOKENIZER_FILES):
        raise APIError(
            422,
            f"path: '{path}' has no tokenizer (one of {', '.join(TOKENIZER_FILES)})",
            param="path",
            code="invalid_value",
        )
    try:
        AutoConfig.from_pretrained(str(where))
    except Exception as exc:
        raise APIError(
            422, f"path: config.json of '{path}' does not load: {exc}", param="path", code="invalid_value"
        ) from None
    return str(where.resolve())


class RegistryServing:
    def __init__(self, manager: ModelManager, redis_url: str):
        self.manager = manager
        self.redis_url = redis_url

    def view(self, row: m.Model) -> RegisteredModel:
        served = self.manager.current
        return RegisteredModel(
            id=row.id,
            name=row.name,
            version=row.version,
            model=version_id(row.name, row.version),
            path=row.path,
            base_model=row.base_model,
            training_run_id=row.training_run_id,
            metrics=row.metrics or {},
            stage=cast(Stage, row.stage),
            created_at=_epoch(row.created_at) or 0,
            promoted_at=_epoch(row.promoted_at),
            serving=served is not None and served.registry_id == row.id,
        )

    def list(self, session: Session, name: str | None, stage: Stage | None) -> RegisteredModelList:
        rows = registry.list_models(session, name)
        return RegisteredModelList(data=[self.view(r) for r in rows if stage is None or r.stage == stage])

    def get(self, session: Session, model_id: str) -> m.Model:
        row = registry.get_model(session, model_id)
        if row is None:
            raise APIError(
                404,
                f"no registered model with id '{model_id}' (see GET /v1/registry/models)",
                param="model_id",
                code="model_not_found",
            )
        return row

    def register(self, session: Session, body: RegisterModelRequest) -> tuple[RegisteredModel, bool]:
        """(the version, created?): registering the same directory under the same name again is a no-op."""
        path = check_model_dir(body.path)
        existing = session.scalars(
            select(m.Model).where(m.Model.name == body.name, m.Model.path == path).order_by(m.Model.version)
        ).first()
        if existing is not None:
            return self.view(existing), False
        row = registry.register_model(
            session, body.name, path, base_model=body.base_model, metrics=body.metrics
        )
        session.commit()
        log.info("registered %s version %d", row.name, row.version)
        return self.view(row), True

    def _promote(self, session: Session, model_id: str) -> m.Model:
        self.get(session, model_id)
        row = registry.promote(session, model_id)
        session.commit()  # visible to every replica before any of them hears about it
        log.info("promoted %s version %d to production", row.name, row.version)
        return row

    async def promote(self, session: Session, model_id: str, wait: bool) -> RegisteredModel:
        row = await run_in_threadpool(self._promote, session, model_id)
        await announce(self.redis_url, "promoted", row.id)
        if wait:
            await self.manager.sync()
        return self.view(row)
