"""POST /v1/predict and /v1/predict/batch (scope `infer`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from distillery_gateway.deps import PrincipalDep, require_scope, serving
from distillery_gateway.disconnect import unless_disconnected
from distillery_gateway.errors import ErrorResponse
from distillery_gateway.predict.protocol import (
    BatchPrediction,
    BatchPredictRequest,
    Prediction,
    PredictRequest,
)
from distillery_gateway.predict.serving import PredictServing
from distillery_gateway.serving_base import json_response

router = APIRouter(tags=["predict"], dependencies=[require_scope("infer")])

Predictor = Annotated[PredictServing, serving(PredictServing)]

RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "The model is not served here."},
    503: {"model": ErrorResponse, "description": "Busy (queue full) or loading: retry after `Retry-After`."},
}


@router.post("/v1/predict", response_model=Prediction, responses=RESPONSES)
async def predict(
    body: PredictRequest, predictor: Predictor, request: Request, principal: PrincipalDep
) -> Response:
    """Answer one multiple-choice question: a valid option index, optionally with a rationale."""
    return json_response(await unless_disconnected(request, predictor.predict(body, principal.key_id)))


@router.post("/v1/predict/batch", response_model=BatchPrediction, responses=RESPONSES)
async def predict_batch(
    body: BatchPredictRequest, predictor: Predictor, request: Request, principal: PrincipalDep
) -> Response:
    """Answer several questions in one request; they share batched generate calls."""
    answers = predictor.predict_batch(body, principal.key_id)
    return json_response(await unless_disconnected(request, answers))
