"""Bodies of GET /v1/models and GET /v1/models/{model} (OpenAI's list shape, plus vLLM's extra fields)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    id: str = Field(description="Pass it as `model`: a version id (`name:vN`) or an alias of the version.")
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "distillery"
    root: str | None = Field(default=None, description="The version id this entry serves.")
    parent: str | None = Field(default=None, description="For an alias: the version id it points to.")
    max_model_len: int | None = Field(default=None, description="Context length in tokens.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
