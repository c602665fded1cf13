"""Liveness and readiness (no API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from distillery.store.db import get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, bool] = {}
    try:
        with get_engine(request.app.state.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:
        checks["database"] = False
    try:
        checks["redis"] = bool(request.app.state.redis.ping())
    except Exception:
        checks["redis"] = False
    for name, probe in getattr(request.app.state, "readiness_probes", {}).items():
        try:
            checks[name] = bool(probe())
        except Exception:
            checks[name] = False
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)
