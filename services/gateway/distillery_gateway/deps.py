"""Typed dependencies: settings, DB session, the caller's principal and scope checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
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


def require_scope(scope: str):
    """Dependency factory: 403 when the (valid) key lacks `scope` (admin has every scope)."""
    if scope not in apikeys.SCOPES:
        raise ValueError(f"unknown scope {scope}")

    def check(principal: PrincipalDep) -> apikeys.Principal:
        if not principal.allows(scope):
            raise APIError(403, f"this API key lacks the '{scope}' scope", code="insufficient_scope")
        return principal

    return Depends(check)
