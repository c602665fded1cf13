"""Readiness: the database and every probe a feature registered answer.

Redis is reported but not required: without it the gateway still serves (rate limits fail open), and a
replica taken out of rotation for a Redis outage would turn a degraded service into no service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import redis
from sqlalchemy import text

from distillery.store.db import get_engine
from distillery_gateway.health.protocol import Readiness


def _passes(check: Callable[[], object]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


class HealthServing:
    def __init__(self, database_url: str, client: redis.Redis, probes: Mapping[str, Callable[[], object]]):
        self.database_url, self.client, self.probes = database_url, client, probes

    def _database(self) -> bool:
        with get_engine(self.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    def readiness(self) -> Readiness:
        checks = {"database": _passes(self._database)}
        checks.update({name: _passes(probe) for name, probe in self.probes.items()})
        ready = all(checks.values())
        checks["redis"] = _passes(self.client.ping)  # informative only
        return Readiness(status="ready" if ready else "not_ready", checks=checks)
