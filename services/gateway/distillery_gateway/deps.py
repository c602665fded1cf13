"""Typed dependencies: settings, DB session, the caller's principal and scope checks.

`authenticate` runs before every route (the app installs it app-wide): it checks the key of every
route not in `app.state.public_paths` and takes one token from the key's rate-limit bucket. So a
route that forgets `PrincipalDep` is still closed; the per-route `require_scope(...)` adds the 403s.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from distillery import apikeys
from distillery.config import Settings
from distillery.store.db import session_factory
from distillery_gateway.errors import APIError


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session = session_factory(request.app.state.database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(request: Request, settings: SettingsDep) -> apikeys.Principal:
    """401 without a valid key. Keys come as `Authorization: Bearer <key>`."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with session_factory(request.app.state.database_url)() as session:
        principal = apikeys.verify_key(
            session, token.strip(), settings.api_key_pepper, settings.api_key_prefix
        )
    if principal is None:
        raise APIError(
            401, "invalid or revoked API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[apikeys.Principal, Depends(get_principal)]


def require_scope(scope: str) -> Any:
    """Dependency factory: 403 when the (valid) key lacks `scope` (admin has every scope)."""
    if scope not in apikeys.SCOPES:
        raise ValueError(f"unknown scope {scope}")

    def check(principal: PrincipalDep) -> apikeys.Principal:
        if not principal.allows(scope):
            raise APIError(403, f"this API key lacks the '{scope}' scope", code="insufficient_scope")
        return principal

    check.required_scope = scope  # type: ignore[attr-defined]  # lets tests list each route's scope
    return Depends(check)


def is_public(request: Request) -> bool:
    route = request.scope.get("route")
    return getattr(route, "path", None) in request.app.state.public_paths


async def authenticate(request: Request) -> None:
    """App-wide: a valid key on every non-public route, then the key's rate limit (429)."""
    if is_public(request):
        return
    principal = await run_in_threadpool(get_principal, request, request.app.state.settings)
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    decision = await limiter.hit(principal.key_id)
    if not decision.allowed:
        request.app.state.metrics.rate_limited.inc()
        raise APIError(
            429,
            f"rate limit of {request.app.state.settings.rate_limit_per_minute} requests per minute "
            f"exceeded for this API key; retry after {decision.retry_after_s:.1f} s",
            code="rate_limit_exceeded",
            headers={
                "Retry-After": str(max(1, math.ceil(decision.retry_after_s))),
                "X-RateLimit-Limit": str(limiter.limit),
                "X-RateLimit-Remaining": "0",
            },
        )
