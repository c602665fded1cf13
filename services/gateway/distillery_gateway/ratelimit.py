"""Per-key rate limit: a token bucket in Redis, taken atomically by one Lua script.

The bucket holds up to `burst` tokens and refills at `per_minute / 60` tokens a second; a request
takes one. The script reads the clock with Redis' TIME, so every gateway replica shares the same
bucket and clock. If Redis cannot be reached the request is let through: the limit protects capacity,
it is not an access control. The client has short connect and socket timeouts, and after a failure the
limiter stops asking Redis for `open_s` seconds (one warning per such interval), so an unreachable Redis
costs a request at most one timeout, and most requests none.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = math.min(tonumber(ARGV[3]) or 1, burst)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {allowed, tostring(tokens), tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: float


class RateLimiter:
    """`await limiter.hit(key_id)` takes one token from that key's bucket (`cost` tokens when given)."""

    def __init__(
        self,
        redis_url: str,
        per_minute: int,
        burst: int | None = None,
        prefix: str = "ratelimit:",
        timeout_s: float = 0.5,
        open_s: float = 5.0,
    ):
        self.limit = burst or per_minute
        self.rate = per_minute / 60.0
        self.prefix = prefix
        self.open_s = open_s
        self.client = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self.script = self.client.register_script(TOKEN_BUCKET)
        self._skip_until = 0.0  # monotonic time before which Redis is not asked (it just failed)
        self.failures = 0  # requests let through because Redis failed (or was being skipped)

    def _fail_open(self, exc: Exception | None) -> Decision:
        self.failures += 1
        if exc is not None:
            self._skip_until = time.monotonic() + self.open_s
            log.warning("rate limit not applied for %.0f s, Redis unavailable: %s", self.open_s, exc)
        return Decision(True, self.limit, 0.0)

    async def hit(self, key_id: str, cost: int = 1) -> Decision:
        """Take `cost` tokens from `key_id`'s bucket (refused, not taken, when fewer are left)."""
        if time.monotonic() < self._skip_until:
            return self._fail_open(None)
        try:
            allowed, tokens, wait = await self.script(
                keys=[self.prefix + key_id], args=[self.rate, self.limit, cost]
            )
        except (aioredis.RedisError, OSError) as exc:
            return self._fail_open(exc)
        return Decision(bool(int(allowed)), int(float(tokens)), float(wait))

    async def aclose(self) -> None:
        await self.client.aclose()


class AuthFailureGuard:
    """Failed authentications cost the client (its address) a token of a bucket of their own.

    A client over its budget gets 429 for the next `retry_after_s`, before any key lookup: a stream of
    wrong keys cannot keep the key store busy. Successful requests never touch this bucket.
    """

    MAX_BLOCKED = 10_000

    def __init__(self, limiter: RateLimiter):
        self.limiter = limiter
        self._blocked: dict[str, float] = {}  # client -> monotonic time its block ends

    def blocked_for(self, client: str) -> float:
        """Seconds `client` must still wait (0 when it may try)."""
        until = self._blocked.get(client, 0.0)
        left = until - time.monotonic()
        if left <= 0 and client in self._blocked:
            del self._blocked[client]
        return max(0.0, left)

    async def failed(self, client: str) -> float:
        """Charge one failure; the seconds `client` is now blocked for (0 while within its budget)."""
        decision = await self.limiter.hit(client)
        if decision.allowed:
            return 0.0
        if len(self._blocked) >= self.MAX_BLOCKED:
            self._blocked.clear()
        self._blocked[client] = time.monotonic() + decision.retry_after_s
        return decision.retry_after_s
