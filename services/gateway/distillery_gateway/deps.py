"""Typed dependencies: settings, DB session, the features' serving objects, the caller's principal and
scope checks.

`authenticate` runs before every route (the app installs it app-wide): it checks the key of every
route not in `app.state.public_paths` and takes one token from the key's rate-limit bucket. So a
route that forgets `PrincipalDep` is still closed; the per-route `require_scope(...)` adds the 403s.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from distillery import apikeys
from distillery.config import Settings
from distillery.store.db import session_factory, session_scope
from distillery_gateway.errors import APIError
from distillery_gateway.ratelimit import AuthFailureGuard
from distillery_gateway.ui.session import api_principal as session_principal


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.database_url) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]

T = TypeVar("T")


def serving(cls: type[T]) -> Any:
    """Dependency: the app's one `cls` object (`create_app` builds every feature's serving object once,
    into `app.state.serving`, keyed by its class)."""

    def get(request: Request) -> T:
        return request.app.state.serving[cls]

    return Depends(get)


# scope="function": commit before the response is sent, so a client that got 2xx sees its write at once.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def verify(request: Request, settings: Settings) -> apikeys.Principal:
    """The principal of the request's key (a DB lookup); 401 without a valid one."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    pepper, prefix = settings.api_key_pepper, settings.api_key_prefix
    with session_factory(request.app.state.database_url)() as session:
        principal = apikeys.verify_key(session, token.strip(), pepper, prefix)
    if principal is None:
        raise APIError(
            401, "invalid or revoked API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
    return principal


class KeyCache:
    """Keys checked in the last `ttl_s` seconds, by the SHA-256 of the key (the key is never kept).

    Saves the database lookup on every request; a revoked key keeps working here for at most `ttl_s`
    (0 turns the cache off). Only successful checks are cached, so a new key works at once.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, apikeys.Principal]] = {}

    @staticmethod
    def _id(request: Request) -> str:
        return hashlib.sha256(request.headers.get("authorization", "").encode()).hexdigest()

    def get(self, request: Request) -> apikeys.Principal | None:
        if self.ttl_s <= 0:
            return None
        entry = self._entries.get(self._id(request))
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def put(self, request: Request, principal: apikeys.Principal) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[self._id(request)] = (time.monotonic() + self.ttl_s, principal)


def too_many_failures(wait_s: float) -> APIError:
    return APIError(
        429,
        f"too many failed authentications from this client; retry after {wait_s:.1f} s",
        code="too_many_auth_failures",
        headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


async def guarded_verify(request: Request) -> apikeys.Principal:
    """`verify`, with failed attempts rate-limited per client address (429 over the budget)."""
    guard: AuthFailureGuard | None = getattr(request.app.state, "auth_failures", None)
    client = request.client.host if request.client else "unknown"
    if guard is not None and (wait_s := guard.blocked_for(client)) > 0:
        raise too_many_failures(wait_s)
    try:
        return await run_in_threadpool(verify, request, request.app.state.settings)
    except APIError as exc:
        if guard is not None and exc.status == 401 and (wait_s := await guard.failed(client)) > 0:
            raise too_many_failures(wait_s) from None
        raise


async def get_principal(request: Request) -> apikeys.Principal:
    """401 without a valid key. Keys come as `Authorization: Bearer <key>` (or a dashboard session
    cookie); checked once per request."""
    # Async, so that routes reading the principal already checked by `authenticate` need no thread.
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    if "authorization" not in request.headers:
        # The dashboard's calls come with its session cookie instead (CSRF-checked for unsafe methods).
        principal = await session_principal(request)
        if principal is not None:
            request.state.principal = principal
            return principal
    keys: KeyCache | None = getattr(request.app.state, "key_cache", None)
    principal = keys.get(request) if keys is not None else None
    if principal is None:
        principal = await guarded_verify(request)
        if keys is not None:
            keys.put(request, principal)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[apikeys.Principal, Depends(get_principal)]


def require_scope(scope: str) -> Any:
    """Dependency factory: 403 when the (valid) key lacks `scope` (admin has every scope)."""
    if scope not in apikeys.SCOPES:
        raise ValueError(f"unknown scope {scope}")

    async def check(principal: PrincipalDep) -> apikeys.Principal:
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
    principal = await get_principal(request)
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
