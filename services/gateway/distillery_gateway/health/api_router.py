"""GET /healthz (the process answers) and /readyz (its dependencies do too); no API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from distillery_gateway.deps import serving
from distillery_gateway.health.protocol import Health, Readiness
from distillery_gateway.health.serving import HealthServing

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready."}}
)
def readyz(health: Annotated[HealthServing, serving(HealthServing)]) -> JSONResponse:
    readiness = health.readiness()
    return JSONResponse(readiness.model_dump(), 200 if readiness.status == "ready" else 503)
