"""Dashboard sessions: an opaque cookie naming a server-side record of the key id and a CSRF token.

Logging in checks the pasted API key against the key store once; the browser then holds only a random
session id (HttpOnly, SameSite=Strict). Redis keeps `sha256(session id) -> {key_id, csrf}` with a
lifetime, so neither the raw key nor a usable session id is stored anywhere. Every request re-reads the
key's row, so revoking the key ends its sessions at once; logging out deletes the record.

The same cookie authenticates the browser's calls to /v1/* (see `deps.get_principal`); an unsafe
method must then carry the session's CSRF token in `X-CSRF-Token`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

import redis
from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from distillery import apikeys
from distillery.config import Settings
from distillery.store.db import session_factory
from distillery_gateway.errors import APIError

COOKIE = "distillery_session"
LOGIN_CSRF_COOKIE = "distillery_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LIFETIME_S = 8 * 3600
_PREFIX = "distillery:ui:session:"


@dataclass(frozen=True)
class UISession:
    principal: apikeys.Principal
    csrf: str


def _record_key(session_id: str) -> str:
    return _PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def tokens_match(given: str | None, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


def check_key(database_url: str, settings: Settings, key: str) -> apikeys.Principal | None:
    """The key's principal from the key store (the check `deps.verify` makes), or None."""
    with session_factory(database_url)() as session:
        return apikeys.verify_key(session, key.strip(), settings.api_key_pepper, settings.api_key_prefix)


class SessionStore:
    """Create, resolve and end dashboard sessions (records in Redis, principals from the key store)."""

    def __init__(self, client: redis.Redis, database_url: str, lifetime_s: int = LIFETIME_S):
        self.client = client
        self.database_url = database_url
        self.lifetime_s = lifetime_s

    def create(self, principal: apikeys.Principal) -> str:
        """A new session for the key; returns the session id (the cookie value)."""
        session_id = secrets.token_urlsafe(32)
        record = {"key_id": principal.key_id, "csrf": secrets.token_urlsafe(32)}
        self.client.set(_record_key(session_id), json.dumps(record), ex=self.lifetime_s)
        return session_id

    def end(self, session_id: str) -> None:
        self.client.delete(_record_key(session_id))

    def resolve(self, session_id: str) -> UISession | None:
        """The live session of this id, or None (unknown, expired, or its key revoked)."""
        raw = self.client.get(_record_key(session_id))
        if raw is None:
            return None
        record = json.loads(raw)
        with session_factory(self.database_url)() as session:
            principal = apikeys.principal_by_id(session, record["key_id"])
        if principal is None:
            self.end(session_id)
            return None
        return UISession(principal, record["csrf"])

    async def from_request(self, request: Request) -> UISession | None:
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            return None
        return await run_in_threadpool(self.resolve, session_id)


async def api_principal(request: Request) -> apikeys.Principal | None:
    """For /v1/*: the principal of the request's dashboard session cookie, None without one.

    401 for a cookie whose session is over; 403 for an unsafe method without the session's CSRF token.
    """
    store: SessionStore | None = getattr(request.app.state, "ui_sessions", None)
    if store is None or not request.cookies.get(COOKIE):
        return None
    session = await store.from_request(request)
    if session is None:
        raise APIError(
            401,
            "the dashboard session is over (expired, logged out or its key revoked); log in again",
            code="invalid_session",
            headers={"WWW-Authenticate": "Bearer"},
        )
    unsafe = request.method not in SAFE_METHODS
    if unsafe and not tokens_match(request.headers.get(CSRF_HEADER), session.csrf):
        raise APIError(
            403, f"missing or wrong {CSRF_HEADER} header for this dashboard session", code="csrf_failed"
        )
    return session.principal
