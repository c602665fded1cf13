"""GET /v1/models: the served model version and its aliases (any valid key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from distillery_gateway.deps import PrincipalDep
from distillery_gateway.openai.models.protocol import ModelCard, ModelList

router = APIRouter(tags=["openai"])


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, _: PrincipalDep) -> ModelList:
    """The model version this replica serves, then its aliases (e.g. the registry name)."""
    return request.app.state.serving_models.list()


@router.get(
    "/v1/models/{model}", response_model=ModelCard, responses={404: {"description": "Not served here."}}
)
async def retrieve_model(
    model: Annotated[str, Path(min_length=1, max_length=300, description="A model id or alias.")],
    request: Request,
    _: PrincipalDep,
) -> ModelCard:
    return request.app.state.serving_models.get(model)
