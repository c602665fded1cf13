"""Bodies of /v1/registry/models: registered student versions and their stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["staging", "production", "archived"]


class RegisterModelRequest(BaseModel):
    """Register an HF-format model directory the gateway can read as the next version of `name`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Registry name (letters, digits, `.`, `_`, `-`); versions count up per name.",
    )
    path: str = Field(
        min_length=1, max_length=4096, description="A local HF model directory (config.json, ...)."
    )
    base_model: str | None = Field(default=None, max_length=200, description="What it was trained from.")
    metrics: dict = Field(default_factory=dict, description="Evaluation figures to keep with it.")


class RegisteredModel(BaseModel):
    id: str = Field(description="Registry id (use it to promote).")
    object: Literal["registry.model"] = "registry.model"
    name: str
    version: int
    model: str = Field(description="The OpenAI `model` id of this version (`name:vN`).")
    path: str
    base_model: str | None = None
    training_run_id: str | None = None
    metrics: dict
    stage: Stage
    created_at: int
    promoted_at: int | None = None
    serving: bool = Field(description="Whether the replica that answered serves this version right now.")


class RegisteredModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RegisteredModel]
