"""Bodies of POST /v1/predict and POST /v1/predict/batch."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from distillery.records import OPTION_LETTERS

Option = Annotated[str, Field(min_length=1, max_length=2000)]


class PredictItem(BaseModel):
    """One multiple-choice question."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=20_000)
    options: list[Option] = Field(
        min_length=2, max_length=len(OPTION_LETTERS), description="The choices, in order."
    )
    context: str | None = Field(None, max_length=100_000, description="A passage the question is about.")
    explain: bool = Field(False, description="Also generate a rationale with a teacher's prefix.")
    teacher: str | None = Field(
        None,
        max_length=100,
        description="Whose rationale style `explain` uses: one of the model's teachers (default: its first).",
    )


class PredictRequest(PredictItem):
    model: str | None = Field(
        None, max_length=300, description="A served model id or alias; default: the served one."
    )
    max_rationale_tokens: int = Field(128, ge=1, le=1024, description="Length cap of the rationale.")


class BatchPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[PredictItem] = Field(
        min_length=1,
        description="The questions (at most the server's DISTILLERY_PREDICT_MAX_ITEMS, 64 by default).",
    )
    model: str | None = Field(
        None, max_length=300, description="A served model id or alias; default: the served one."
    )
    max_rationale_tokens: int = Field(128, ge=1, le=1024, description="Length cap of each rationale.")


class Prediction(BaseModel):
    answer_index: int = Field(description="0-based index of the chosen option (always valid).")
    answer: str = Field(description="The chosen option's text.")
    answer_letter: str = Field(description="`a`, `b`, ... as in the prompt's `(a) ...` lines.")
    method: Literal["generation", "likelihood"] = Field(
        description="`generation`: the generated answer named an option; `likelihood`: it did not, so the "
        "option with the best `option_scores` was chosen."
    )
    option_scores: list[float] | None = Field(
        None,
        description="With `likelihood`: per option, the summed log-probability of its answer target "
        "`(b) text` per character (lm-evaluation-harness `acc_norm`, as `distillery eval` reports it).",
    )
    rationale: str | None = Field(None, description="The generated explanation (with `explain`).")
    model: str = Field(description="The model version that answered.")
    latency_ms: float


class BatchPrediction(BaseModel):
    object: Literal["list"] = "list"
    data: list[Prediction]
    model: str
    latency_ms: float
