"""Dashboard sessions: an opaque cookie naming a server-side record of the key id and a CSRF token.

Logging in checks the pasted API key against the key store once; the browser then holds only a random
session id (HttpOnly, SameSite=Strict). Redis keeps `sha256(session id) -> {key_id, csrf}` with a
lifetime, so neither the raw key nor a usable session id is stored anywhere. Every request re-reads the
key's row, so revoking the key ends its sessions at once; logging out deletes the record.

A record is signed: HMAC-SHA256 over (record name, key id, CSRF token, expiry) with a secret only the key
store holds (the key's stored hash, with the pepper). Whoever can write to Redis cannot mint or extend a
session: a record that does not verify is deleted and answers 401.

The same cookie authenticates the browser's calls to /v1/* (see `deps.get_principal`); an unsafe
method must then carry the session's CSRF token in `X-CSRF-Token`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
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


def _signature(secret: bytes, record_key: str, key_id: str, csrf: str, expires: int) -> str:
    message = f"{record_key}|{key_id}|{csrf}|{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class SessionStore:
    """Create, resolve and end dashboard sessions (signed records in Redis, principals from the key store)."""

    def __init__(
        self, client: redis.Redis, database_url: str, pepper: str = "", lifetime_s: int = LIFETIME_S
    ):
        self.client = client
        self.database_url = database_url
        self.pepper = pepper.encode()
        self.lifetime_s = lifetime_s

    def _key_secret(self, key_id: str) -> tuple[apikeys.Principal, bytes] | None:
        with session_factory(self.database_url)() as session:
            found = apikeys.principal_and_secret(session, key_id)
        return None if found is None else (found[0], found[1] + b"|" + self.pepper)

    def create(self, principal: apikeys.Principal) -> str:
        """A new session for the key; returns the session id (the cookie value)."""
        found = self._key_secret(principal.key_id)
        if found is None:
            raise APIError(401, "invalid or revoked API key", code="invalid_api_key")
        session_id = secrets.token_urlsafe(32)
        name, csrf, expires = (
            _record_key(session_id),
            secrets.token_urlsafe(32),
            int(time.time()) + self.lifetime_s,
        )
        record = {
            "key_id": principal.key_id,
            "csrf": csrf,
            "expires": expires,
            "sig": _signature(found[1], name, principal.key_id, csrf, expires),
        }
        self.client.set(name, json.dumps(record), ex=self.lifetime_s)
        return session_id

    def end(self, session_id: str) -> None:
        self.client.delete(_record_key(session_id))

    def resolve(self, session_id: str) -> UISession | None:
        """The live session of this id, or None (unknown, expired, forged, or its key revoked)."""
        name = _record_key(session_id)
        raw = self.client.get(name)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            key_id, csrf, expires, sig = (
                str(record["key_id"]),
                str(record["csrf"]),
                int(record["expires"]),
                str(record["sig"]),
            )
        except (ValueError, TypeError, KeyError):
            found, key_id, csrf, expires, sig = None, "", "", 0, ""
        else:
            found = self._key_secret(key_id)
        valid = (
            found is not None
            and expires > time.time()
            and hmac.compare_digest(sig, _signature(found[1], name, key_id, csrf, expires))
        )
        if found is None or not valid:
            self.end(session_id)
            return None
        return UISession(found[0], csrf)

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
