"""Per-key rate limit: a token bucket in Redis, taken atomically by one Lua script.

The bucket holds up to `burst` tokens and refills at `per_minute / 60` tokens a second; a request
takes one. The script reads the clock with Redis' TIME, so every gateway replica shares the same
bucket and clock. If Redis cannot be reached the request is let through (and logged): the limit
protects capacity, it is not an access control.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
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
    """`await limiter.hit(key_id)` takes one token from that key's bucket."""

    def __init__(self, redis_url: str, per_minute: int, burst: int | None = None, prefix: str = "ratelimit:"):
        self.limit = burst or per_minute
        self.rate = per_minute / 60.0
        self.prefix = prefix
        self.client = aioredis.Redis.from_url(redis_url)
        self.script = self.client.register_script(TOKEN_BUCKET)

    async def hit(self, key_id: str) -> Decision:
        try:
            allowed, tokens, wait = await self.script(
                keys=[self.prefix + key_id], args=[self.rate, self.limit]
            )
        except aioredis.RedisError as exc:
            log.warning("rate limit not applied, Redis unavailable: %s", exc)
            return Decision(True, self.limit, 0.0)
        return Decision(bool(int(allowed)), int(float(tokens)), float(wait))

    async def aclose(self) -> None:
        await self.client.aclose()
