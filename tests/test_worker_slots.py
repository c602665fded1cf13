"""The cross-worker teacher slot limit, on the session's real Redis."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from distillery_worker.slots import TeacherSlots


async def _busy(slots: TeacherSlots, state: dict, hold: float) -> None:
    async with slots.slot() as held:
        assert held
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(hold)
        state["now"] -= 1


def test_limit_holds_across_independent_holders(clean_redis: str) -> None:
    async def main() -> dict:
        # Two clients stand for two worker processes sharing one teacher.
        a, b = aioredis.Redis.from_url(clean_redis), aioredis.Redis.from_url(clean_redis)
        state = {"now": 0, "peak": 0}
        async with TeacherSlots(a, 7, limit=2) as sa, TeacherSlots(b, 7, limit=2) as sb:
            await asyncio.gather(*(_busy(s, state, 0.05) for s in (sa, sb) * 6))
            left = await a.zcard(sa.key)
        await a.aclose()
        await b.aclose()
        return {**state, "left": left}

    result = asyncio.run(main())
    assert result["peak"] == 2
    assert result["left"] == 0


def test_slot_of_a_vanished_holder_is_taken_over_after_its_lease(clean_redis: str) -> None:
    async def main() -> bool:
        client = aioredis.Redis.from_url(clean_redis)
        dead = TeacherSlots(client, 8, limit=1, lease_s=1.5)
        # A holder that never renews nor releases, as a worker killed with -9.
        assert await dead._acquire(keys=[dead.key], args=[1, 1.5, "dead-worker"])
        live = TeacherSlots(client, 8, limit=1, lease_s=30, wait_s=0.2)
        async with live, live.slot() as held:
            took = held
        await client.aclose()
        return took

    assert asyncio.run(asyncio.wait_for(main(), timeout=30))


def test_waiter_gives_up_when_told(clean_redis: str) -> None:
    async def main() -> bool:
        client = aioredis.Redis.from_url(clean_redis)
        async with TeacherSlots(client, 9, limit=1, wait_s=0.1) as slots, slots.slot() as first:
            assert first
            async with slots.slot(give_up=lambda: True) as second:
                result = second
        await client.aclose()
        return result

    assert asyncio.run(main()) is False
