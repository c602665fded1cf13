"""The gateway's FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from distillery import __version__
from distillery.config import Settings, get_settings
from distillery.queue import make_celery
from distillery_gateway import errors
from distillery_gateway.routes import health
from distillery_gateway.routes import jobs as jobs_routes
from distillery_gateway.routes import teachers as teachers_routes


def create_app(
    settings: Settings | None = None, database_url: str | None = None, redis_url: str | None = None
) -> FastAPI:
    """Build the app. URLs default to the settings; both must be set (`distillery up` sets them)."""
    settings = settings or get_settings()
    database_url = database_url or settings.database_url
    redis_url = redis_url or settings.redis_url
    if not database_url or not redis_url:
        raise RuntimeError("the gateway needs DATABASE_URL and REDIS_URL (distillery up sets them)")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for hook in app.state.startup_hooks:
            await hook(app)
        yield
        for hook in reversed(app.state.shutdown_hooks):
            await hook(app)
        app.state.redis.close()

    app = FastAPI(
        title="distillery",
        version=__version__,
        lifespan=lifespan,
        description="Rationale jobs, training runs, model registry and the distilled student.",
    )
    app.state.settings = settings
    app.state.database_url = database_url
    app.state.redis_url = redis_url
    app.state.redis = redis.Redis.from_url(redis_url)
    app.state.celery = make_celery(redis_url)
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []
    app.state.readiness_probes = {}
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs_routes.router)
    app.include_router(teachers_routes.router)
    return app
