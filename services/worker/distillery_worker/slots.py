"""A per-teacher cap on in-flight calls across every worker process: leases in a Redis sorted set.

Each call holds a lease (member = random token, score = expiry on the Redis clock) while it runs; the
holder renews its leases in the background, so a worker killed with -9 frees its slots one lease
lifetime later instead of never. A release pushes a token onto a wake list that waiters block on, so a
freed slot is taken within a Redis round trip rather than a polling interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis

KEY = "distillery:teacher-slots:{teacher_id}"
WAKE = "distillery:teacher-slots:{teacher_id}:wake"

# Drop expired leases, then take a free slot if there is one. Scores are Redis server time, so workers
# on machines with skewed clocks agree.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
  return 1
end
return 0
"""

_COUNT = """
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) + tonumber(t[2]) / 1e6)
return redis.call('ZCARD', KEYS[1])
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
return 1
"""

# Free a slot and wake one waiter. Unclaimed wake tokens only cause a spare acquire attempt; keep at most
# `limit` of them. One script call per release (a 4-command pipeline cost the worker ~10 % of its CPU).
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], 1)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[2], 300)
return 1
"""


class TeacherSlots:
    """At most `limit` concurrent calls to one teacher, counted over all workers."""

    def __init__(
        self, client: aioredis.Redis, teacher_id: int, limit: int, lease_s: float = 30.0, wait_s: float = 2.0
    ):
        self.key = KEY.format(teacher_id=teacher_id)
        self.wake_key = WAKE.format(teacher_id=teacher_id)
        self.limit = limit
        self.lease_s = lease_s
        self.wait_s = wait_s
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._count = client.register_script(_COUNT)
        self._free = client.register_script(_RELEASE)
        self._held: set[str] = set()
        self._renewer: asyncio.Task | None = None

    async def __aenter__(self) -> TeacherSlots:
        self._renewer = asyncio.create_task(self._renew_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for token in list(self._held):
            await self._release(token)
        self._held.clear()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if self._held:
                await self._renew(keys=[self.key], args=[self.lease_s, *self._held])

    async def wait_for_room(self, timeout: float, poll_s: float = 0.25) -> bool:
        """True once fewer than `limit` calls are in flight; False if the teacher stays full `timeout` s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while await self._count(keys=[self.key]) >= self.limit:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    @contextlib.asynccontextmanager
    async def slot(self, give_up: Callable[[], bool] | None = None) -> AsyncIterator[bool]:
        """Hold one slot for the block; yields False (holding nothing) if `give_up()` turns true first."""
        token = secrets.token_hex(8)
        while not await self._acquire(keys=[self.key], args=[self.limit, self.lease_s, token]):
            if give_up is not None and give_up():
                yield False
                return
            # Wakes on a release, or after wait_s to catch leases that expired without one.
            await self._client.blpop([self.wake_key], timeout=self.wait_s)
        self._held.add(token)
        try:
            yield True
        finally:
            self._held.discard(token)
            await self._release(token)

    async def _release(self, token: str) -> None:
        await self._free(keys=[self.key, self.wake_key], args=[token, self.limit])
