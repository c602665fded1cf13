"""API keys: issued once, stored as a salted hash, checked per request.

A key reads `<prefix><key_id>_<secret>`. `key_id` is public (shown in listings, used for lookup);
only sha256(salt | secret | pepper) is stored. Keys carry 32 random bytes, so a fast hash is enough:
brute force is hopeless and a slow KDF would cost every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from distillery.store import models as m

SCOPES = ("jobs:read", "jobs:write", "train:read", "train:write", "models:read", "infer", "admin")
# A scope implies these (`admin` implies every scope): a key that may write or use something may read it.
IMPLIES = {"jobs:write": ("jobs:read",), "train:write": ("train:read",), "infer": ("models:read",)}


@dataclass(frozen=True)
class IssuedKey:
    key: str  # shown once
    key_id: str
    name: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return (
            "admin" in self.scopes
            or scope in self.scopes
            or any(scope in IMPLIES.get(held, ()) for held in self.scopes)
        )


def parse_scopes(text: str | list[str]) -> tuple[str, ...]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    bad = [s for s in items if s not in SCOPES]
    if bad or not items:
        raise ValueError(f"scopes {bad or '(none)'} not accepted (accepted: {', '.join(SCOPES)})")
    return tuple(dict.fromkeys(items))


def _digest(salt: str, secret: str, pepper: str) -> str:
    return hashlib.sha256(f"{salt}|{secret}|{pepper}".encode()).hexdigest()


def create_key(
    session: Session, name: str, scopes: tuple[str, ...], pepper: str = "", prefix: str = "dst_"
) -> IssuedKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    session.add(
        m.ApiKey(
            key_id=key_id, name=name, salt=salt, key_hash=_digest(salt, secret, pepper), scopes=list(scopes)
        )
    )
    session.flush()
    return IssuedKey(f"{prefix}{key_id}_{secret}", key_id, name, scopes)


def split_key(key: str, prefix: str = "dst_") -> tuple[str, str] | None:
    if not key.startswith(prefix):
        return None
    key_id, sep, secret = key[len(prefix) :].partition("_")
    return (key_id, secret) if sep and key_id and secret else None


def verify_key(session: Session, key: str, pepper: str = "", prefix: str = "dst_") -> Principal | None:
    """The key's principal, or None when it is malformed, unknown, wrong or revoked."""
    parts = split_key(key, prefix)
    if parts is None:
        return None
    key_id, secret = parts
    row = session.scalars(select(m.ApiKey).where(m.ApiKey.key_id == key_id)).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, _digest(row.salt, secret, pepper)):
        return None
    return Principal(row.key_id, row.name, frozenset(row.scopes))


def principal_by_id(session: Session, key_id: str) -> Principal | None:
    """The principal of a key known by its id (a dashboard session holds only the id); None if revoked."""
    found = principal_and_secret(session, key_id)
    return found[0] if found is not None else None


def principal_and_secret(session: Session, key_id: str) -> tuple[Principal, bytes] | None:
    """The live key's principal and a secret only the key store knows (its stored hash), to sign records
    kept elsewhere (dashboard sessions in Redis) so that writing there cannot mint them; None if revoked."""
    row = session.scalars(select(m.ApiKey).where(m.ApiKey.key_id == key_id)).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.key_id, row.name, frozenset(row.scopes)), row.key_hash.encode()


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.scalars(select(m.ApiKey).where(m.ApiKey.key_id == key_id)).one_or_none()
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return True


def list_keys(session: Session) -> list[m.ApiKey]:
    return list(session.scalars(select(m.ApiKey).order_by(m.ApiKey.id)))
