"""The gateway's FastAPI application.

`create_app()` (a factory: `uvicorn --factory distillery_gateway.app:create_app`) wires the pieces:
the student engine behind a model manager (hot swap on promotion), the registry watcher, API-key
auth + per-key rate limit on every route but the public ones, the request size limit, metrics and
OpenAI-shaped errors.

Every feature is a folder of three modules (vLLM's layout): `protocol.py` (the request and response
bodies), `serving.py` (the logic) and `api_router.py` (the thin HTTP layer). `create_app` builds each
feature's serving object once, into `app.state.serving` (keyed by its class), where the routes fetch it
with `deps.serving(cls)`; the app only includes the features' routers. List endpoints page one way, by
cursor (`pagination.py`).

Public without a key: /healthz, /readyz, /metrics when DISTILLERY_METRICS_PUBLIC=true, and (like
vLLM's server) the OpenAPI document and its /docs and /redoc pages, which describe but serve nothing.
The dashboard at /ui (`ui/`) checks its own session and sends a browser without one to its login page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute, APIRouter
from sqlalchemy.engine import make_url

from distillery import __version__
from distillery.config import Settings, get_settings
from distillery.queue import make_celery
from distillery_gateway import errors, openapi
from distillery_gateway.admission import Admission
from distillery_gateway.deps import KeyCache, authenticate
from distillery_gateway.engine.factory import backend_factory
from distillery_gateway.engine.manager import ModelManager
from distillery_gateway.engine.watcher import RegistryWatcher
from distillery_gateway.health import api_router as health_router
from distillery_gateway.health.serving import HealthServing
from distillery_gateway.jobs import api_router as jobs_router
from distillery_gateway.jobs.serving import JobService
from distillery_gateway.metrics import GatewayMetrics
from distillery_gateway.metrics import api_router as metrics_router
from distillery_gateway.metrics.serving import MetricsServing
from distillery_gateway.middleware import BodySizeLimit, RequestMetrics
from distillery_gateway.openai.chat_completion import api_router as chat_router
from distillery_gateway.openai.chat_completion.serving import ChatServing
from distillery_gateway.openai.completion import api_router as completion_router
from distillery_gateway.openai.completion.serving import CompletionServing
from distillery_gateway.openai.models import api_router as models_router
from distillery_gateway.openai.models.serving import ModelsServing
from distillery_gateway.predict import api_router as predict_router
from distillery_gateway.predict.serving import PredictServing
from distillery_gateway.ratelimit import AuthFailureGuard, RateLimiter
from distillery_gateway.registry import api_router as registry_router
from distillery_gateway.registry.serving import RegistryServing
from distillery_gateway.teachers import api_router as teachers_router
from distillery_gateway.teachers.serving import TeacherService
from distillery_gateway.training import api_router as training_router
from distillery_gateway.training.serving import TrainingService
from distillery_gateway.ui import routes as ui_routes

OPENAI_ROUTERS: tuple[APIRouter, ...] = (models_router.router, completion_router.router, chat_router.router)
# Each feature's api_router module, in the order the OpenAPI document lists them.
FEATURES = (
    health_router,
    metrics_router,
    models_router,
    completion_router,
    chat_router,
    predict_router,
    registry_router,
    jobs_router,
    teachers_router,
    training_router,
)


WEAK_PEPPERS = {"", "change-me", "changeme"}
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def check_pepper(settings: Settings, database_url: str) -> None:
    """A real DISTILLERY_API_KEY_PEPPER is required unless the database is local (embedded or a laptop):
    with a weak one, a leaked key table can be checked offline."""
    host = make_url(database_url).host or ""
    if settings.api_key_pepper.strip().lower() in WEAK_PEPPERS and host not in LOCAL_HOSTS:
        raise RuntimeError(
            f"DISTILLERY_API_KEY_PEPPER is empty or a placeholder, and the database ({host}) is not local: "
            "set a long random pepper (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


def create_app(
    settings: Settings | None = None, database_url: str | None = None, redis_url: str | None = None
) -> FastAPI:
    """Build the app. URLs default to the settings; both must be set (`distillery up` sets them)."""
    settings = settings or get_settings()
    database_url = database_url or settings.database_url
    redis_url = redis_url or settings.redis_url
    if not database_url or not redis_url:
        raise RuntimeError("the gateway needs DATABASE_URL and REDIS_URL (distillery up sets them)")
    check_pepper(settings, database_url)

    metrics = GatewayMetrics()
    manager = ModelManager(settings, database_url, backend_factory(settings, metrics), metrics)
    admission = Admission(settings.token_rate_limit_per_minute, settings.max_sequences_per_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Async clients belong to the serving loop, so they are made here, not at import.
        timeout = settings.redis_timeout_s
        app.state.rate_limiter = RateLimiter(
            redis_url, settings.rate_limit_per_minute, settings.rate_limit_burst, timeout_s=timeout
        )
        app.state.auth_failures = AuthFailureGuard(
            RateLimiter(redis_url, settings.auth_failures_per_minute, prefix="authfail:", timeout_s=timeout)
        )
        admission.limiter = RateLimiter(
            redis_url, settings.token_rate_limit_per_minute, prefix="ratelimit:tokens:", timeout_s=timeout
        )
        watcher = app.state.watcher = RegistryWatcher(manager, redis_url, settings.registry_poll_s)
        watcher.start()  # loads the served model in the background; /readyz says when it is in
        for hook in app.state.startup_hooks:
            await hook(app)
        yield
        for hook in reversed(app.state.shutdown_hooks):
            await hook(app)
        await watcher.stop()
        await manager.aclose()
        await app.state.rate_limiter.aclose()
        await app.state.auth_failures.limiter.aclose()
        await admission.limiter.aclose()
        app.state.redis.close()

    app = FastAPI(
        title="distillery",
        version=__version__,
        lifespan=lifespan,
        description="Rationale jobs, training runs, model registry and the distilled student "
        "(OpenAI-compatible). Authenticate with `Authorization: Bearer <API key>`.",
        dependencies=[Depends(authenticate)],
    )
    app.state.settings = settings
    app.state.database_url = database_url
    app.state.redis_url = redis_url
    # Short timeouts: an unreachable Redis must not hang requests (sessions, readiness, rate limits).
    app.state.redis = redis.Redis.from_url(
        redis_url, socket_connect_timeout=settings.redis_timeout_s, socket_timeout=settings.redis_timeout_s
    )
    app.state.celery = make_celery(redis_url)
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []
    app.state.readiness_probes = {"model": lambda: manager.ready}
    app.state.public_paths = {"/healthz", "/readyz"} | ({"/metrics"} if settings.metrics_public else set())
    app.state.openai_paths = {
        route.path for router in OPENAI_ROUTERS for route in router.routes if isinstance(route, APIRoute)
    }
    app.state.metrics = metrics
    app.state.manager = manager
    app.state.rate_limiter = None
    app.state.auth_failures = None
    app.state.key_cache = KeyCache(settings.auth_cache_s)
    services = (
        HealthServing(database_url, app.state.redis, app.state.readiness_probes),
        MetricsServing(metrics, manager),
        ModelsServing(manager),
        CompletionServing(manager, settings, metrics, admission),
        ChatServing(manager, settings, metrics, admission),
        PredictServing(manager, settings, metrics, admission),
        RegistryServing(manager, redis_url),
        JobService(app.state.celery, database_url),
        TeacherService(settings),
        TrainingService(app.state.celery),
    )
    app.state.serving = {type(service): service for service in services}
    errors.install(app)
    openapi.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    for feature in FEATURES:
        app.include_router(feature.router)
    ui_routes.install(app)  # the dashboard at /ui
    return app
