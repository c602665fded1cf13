"""GET /metrics in Prometheus' text format: `admin` key, or open when DISTILLERY_METRICS_PUBLIC=true."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from distillery_gateway.errors import APIError

router = APIRouter(tags=["operations"])


async def admin_unless_public(request: Request) -> None:
    """403 without an `admin` key, unless DISTILLERY_METRICS_PUBLIC=true (then open to scrapers)."""
    if request.app.state.settings.metrics_public:
        return
    principal = getattr(request.state, "principal", None)
    if principal is None or not principal.allows("admin"):
        raise APIError(403, "this API key lacks the 'admin' scope", code="insufficient_scope")


admin_unless_public.required_scope = "admin"  # type: ignore[attr-defined]


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Metrics."}
    },
    dependencies=[Depends(admin_unless_public)],
)
def metrics(request: Request) -> Response:
    """Requests, latencies, batch sizes, queue depth, tokens, and the model version served."""
    state = request.app.state
    state.metrics.queue_depth.set(state.manager.queue_depth)
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
