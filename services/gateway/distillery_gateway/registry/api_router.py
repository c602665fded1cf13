"""/v1/registry/models: reads with `models:read`, writes (register, promote) with `admin`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from distillery_gateway.deps import SessionDep, require_scope, serving
from distillery_gateway.errors import ErrorResponse
from distillery_gateway.registry.protocol import (
    RegisteredModel,
    RegisteredModelList,
    RegisterModelRequest,
    Stage,
)
from distillery_gateway.registry.serving import RegistryServing

router = APIRouter(prefix="/v1/registry/models", tags=["registry"])

Registry = Annotated[RegistryServing, serving(RegistryServing)]
ModelId = Annotated[str, Path(min_length=1, max_length=32, description="The registry id.")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such registered model."}
}


@router.get("", response_model=RegisteredModelList, dependencies=[require_scope("models:read")])
def list_models(
    registry: Registry,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=100, description="Only versions of this name.")] = None,
    stage: Annotated[Stage | None, Query(description="Only versions in this stage.")] = None,
) -> RegisteredModelList:
    """Every registered version, newest first per name, with its stage and whether it is served here."""
    return registry.list(session, name, stage)


@router.post(
    "",
    response_model=RegisteredModel,
    status_code=201,
    dependencies=[require_scope("admin")],
    responses={200: {"model": RegisteredModel, "description": "Already registered (same name and path)."}},
)
async def register_model(body: RegisterModelRequest, registry: Registry, session: SessionDep) -> JSONResponse:
    """Register a local HF model directory as the next version of `name` (stage `staging`)."""
    view, created = await run_in_threadpool(registry.register, session, body)
    return JSONResponse(view.model_dump(mode="json"), status_code=201 if created else 200)


@router.get(
    "/{model_id}",
    response_model=RegisteredModel,
    responses=NOT_FOUND,
    dependencies=[require_scope("models:read")],
)
def get_model(model_id: ModelId, registry: Registry, session: SessionDep) -> RegisteredModel:
    return registry.view(registry.get(session, model_id))


@router.post(
    "/{model_id}/promote",
    response_model=RegisteredModel,
    dependencies=[require_scope("admin")],
    responses=NOT_FOUND,
)
async def promote_model(
    model_id: ModelId,
    registry: Registry,
    session: SessionDep,
    wait: Annotated[
        bool, Query(description="Answer once this replica serves it (others follow on their own).")
    ] = False,
) -> RegisteredModel:
    """Make this version production: every replica loads it in the background and swaps atomically.
    Roll back by promoting the previous version."""
    return await registry.promote(session, model_id, wait)
