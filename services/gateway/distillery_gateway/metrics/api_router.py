"""GET /metrics in Prometheus' text format: `admin` key, or open when DISTILLERY_METRICS_PUBLIC=true."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from distillery_gateway.deps import serving
from distillery_gateway.errors import APIError
from distillery_gateway.metrics.protocol import MEDIA_TYPE, RESPONSES
from distillery_gateway.metrics.serving import MetricsServing

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
    "/metrics", response_class=Response, responses=RESPONSES, dependencies=[Depends(admin_unless_public)]
)
def metrics(exposition: Annotated[MetricsServing, serving(MetricsServing)]) -> Response:
    """Requests, latencies, batch sizes, queue depth, tokens, and the model version served."""
    return Response(exposition.exposition(), media_type=MEDIA_TYPE)
