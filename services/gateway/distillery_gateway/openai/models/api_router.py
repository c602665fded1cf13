"""GET /v1/models: the served model version and its aliases (`models:read`, which `infer` implies)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from distillery_gateway.deps import require_scope, serving
from distillery_gateway.openai.models.protocol import ModelCard, ModelList
from distillery_gateway.openai.models.serving import ModelsServing

router = APIRouter(tags=["openai"], dependencies=[require_scope("models:read")])

Models = Annotated[ModelsServing, serving(ModelsServing)]


@router.get("/v1/models", response_model=ModelList)
async def list_models(models: Models) -> ModelList:
    """The model version this replica serves, then its aliases (e.g. the registry name)."""
    return models.list()


@router.get(
    "/v1/models/{model}", response_model=ModelCard, responses={404: {"description": "Not served here."}}
)
async def retrieve_model(
    model: Annotated[str, Path(min_length=1, max_length=300, description="A model id or alias.")],
    models: Models,
) -> ModelCard:
    return models.get(model)
