"""The gateway's FastAPI application.

`create_app()` (a factory: `uvicorn --factory distillery_gateway.app:create_app`) wires the pieces:
the student engine behind a model manager (hot swap on promotion), the registry watcher, API-key
auth + per-key rate limit on every route but the public ones, the request size limit, metrics and
OpenAI-shaped errors. Each feature folder brings its router; the app only includes them.

Public without a key: /healthz, /readyz, /metrics when DISTILLERY_METRICS_PUBLIC=true, and (like
vLLM's server) the OpenAPI document and its /docs and /redoc pages, which describe but serve nothing.
The dashboard at /ui (`ui/`) checks its own session and sends a browser without one to its login page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import Depends, FastAPI
from fastapi.routing import APIRouter

from distillery import __version__
from distillery.config import Settings, get_settings
from distillery.queue import make_celery
from distillery_gateway import errors, openapi
from distillery_gateway.deps import KeyCache, authenticate
from distillery_gateway.engine.factory import backend_factory
from distillery_gateway.engine.manager import ModelManager
from distillery_gateway.engine.watcher import RegistryWatcher
from distillery_gateway.metrics import GatewayMetrics
from distillery_gateway.middleware import BodySizeLimit, RequestMetrics
from distillery_gateway.openai.chat_completion import api_router as chat_router
from distillery_gateway.openai.chat_completion.serving import ChatServing
from distillery_gateway.openai.completion import api_router as completion_router
from distillery_gateway.openai.completion.serving import CompletionServing
from distillery_gateway.openai.models import api_router as models_router
from distillery_gateway.openai.models.serving import ModelsServing
from distillery_gateway.predict import api_router as predict_router
from distillery_gateway.predict.serving import PredictServing
from distillery_gateway.ratelimit import RateLimiter
from distillery_gateway.registry import api_router as registry_router
from distillery_gateway.registry.serving import RegistryServing
from distillery_gateway.routes import health
from distillery_gateway.routes import jobs as jobs_routes
from distillery_gateway.routes import metrics as metrics_routes
from distillery_gateway.routes import teachers as teachers_routes
from distillery_gateway.routes import training as training_routes
from distillery_gateway.ui import routes as ui_routes

OPENAI_ROUTERS: tuple[APIRouter, ...] = (models_router.router, completion_router.router, chat_router.router)


def create_app(
    settings: Settings | None = None, database_url: str | None = None, redis_url: str | None = None
) -> FastAPI:
    """Build the app. URLs default to the settings; both must be set (`distillery up` sets them)."""
    settings = settings or get_settings()
    database_url = database_url or settings.database_url
    redis_url = redis_url or settings.redis_url
    if not database_url or not redis_url:
        raise RuntimeError("the gateway needs DATABASE_URL and REDIS_URL (distillery up sets them)")

    metrics = GatewayMetrics()
    manager = ModelManager(settings, database_url, backend_factory(settings, metrics), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Async clients belong to the serving loop, so they are made here, not at import.
        app.state.rate_limiter = RateLimiter(
            redis_url, settings.rate_limit_per_minute, settings.rate_limit_burst
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
    app.state.redis = redis.Redis.from_url(redis_url)
    app.state.celery = make_celery(redis_url)
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []
    app.state.readiness_probes = {"model": lambda: manager.ready}
    app.state.public_paths = {"/healthz", "/readyz"} | ({"/metrics"} if settings.metrics_public else set())
    app.state.openai_paths = {route.path for router in OPENAI_ROUTERS for route in router.routes}
    app.state.metrics = metrics
    app.state.manager = manager
    app.state.rate_limiter = None
    app.state.key_cache = KeyCache(settings.auth_cache_s)
    app.state.serving_models = ModelsServing(manager)
    app.state.serving_completion = CompletionServing(manager, settings, metrics)
    app.state.serving_chat = ChatServing(manager, settings, metrics)
    app.state.serving_predict = PredictServing(manager, settings, metrics)
    app.state.serving_registry = RegistryServing(manager, redis_url)
    errors.install(app)
    openapi.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    for router in OPENAI_ROUTERS:
        app.include_router(router)
    app.include_router(predict_router.router)
    app.include_router(registry_router.router)
    app.include_router(jobs_routes.router)
    app.include_router(teachers_routes.router)
    app.include_router(training_routes.router)
    ui_routes.install(app)  # the dashboard at /ui
    return app
