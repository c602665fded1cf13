"""Tells every gateway replica that the registry changed: Redis pub/sub, with DB polling as fallback.

A promotion publishes on `CHANNEL`; each replica's listener calls `manager.sync()` at once. Messages
sent while a replica is down or disconnected are lost, which is why every replica also polls the
registry every `registry_poll_s` seconds: a promotion made straight in the database (or a missed
message) is picked up within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import redis.asyncio as aioredis

from distillery_gateway.engine.manager import ModelManager

log = logging.getLogger(__name__)

CHANNEL = "distillery:registry"
RECONNECT_S = 2.0


async def announce(redis_url: str, event: str, model_id: str) -> None:
    """Publish a registry change (best effort: polling covers a lost message)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.publish(CHANNEL, json.dumps({"event": event, "model_id": model_id}))
    except aioredis.RedisError as exc:
        log.warning("could not announce %s of %s on Redis (replicas will poll): %s", event, model_id, exc)
    finally:
        await client.aclose()


class RegistryWatcher:
    """Background tasks that keep `manager` on the registry's production model."""

    def __init__(self, manager: ModelManager, redis_url: str, poll_s: float):
        self.manager = manager
        self.redis_url = redis_url
        self.poll_s = poll_s
        self._tasks: list[asyncio.Task] = []
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sync_safely(), name="registry-initial-sync"),
            asyncio.create_task(self._listen(), name="registry-listen"),
            asyncio.create_task(self._poll(), name="registry-poll"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _sync_safely(self) -> None:
        try:
            await self.manager.sync()
        except Exception:  # a DB hiccup must not stop the watcher; the next poll retries
            log.exception("registry sync failed")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self._sync_safely()

    async def _listen(self) -> None:
        while True:
            client = aioredis.Redis.from_url(self.redis_url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._sync_safely()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                log.warning("registry subscription lost (%s); polling meanwhile, reconnecting", exc)
                await asyncio.sleep(RECONNECT_S)
            finally:
                await client.aclose()
