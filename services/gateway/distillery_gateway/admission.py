"""Fair use of the student per API key: a token budget and a share of the queue.

Before a generation request reaches the engine it is charged, per key:

* **tokens**: its prompt tokens plus the most it may generate (every sequence's `max_tokens`), from a
  token bucket in Redis (`DISTILLERY_TOKEN_RATE_LIMIT_PER_MINUTE`), shared by every replica like the
  request limit; a big request costs what it may cost, not one request;
* **a share of the queue**: the sequences (prompts x n) a key has queued or running on this replica at
  once, at most `DISTILLERY_MAX_SEQUENCES_PER_KEY`, so one key's large batches cannot fill the queue
  and turn everyone else away with 503. A request larger than the share on its own is a 400.

Both answer 429 with Retry-After when over; the share is held until the answer (or its stream) ends.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from distillery_gateway.errors import APIError
from distillery_gateway.ratelimit import RateLimiter

SHARE_RETRY_S = 1


class Admission:
    def __init__(self, tokens_per_minute: int, max_sequences: int):
        self.tokens_per_minute = tokens_per_minute
        self.max_sequences = max_sequences
        self.limiter: RateLimiter | None = None  # set by the app's lifespan (its Redis client is async)
        self.held: Counter[str] = Counter()  # key id -> sequences queued or running here

    @contextmanager
    def share(self, key_id: str, sequences: int, param: str) -> Iterator[None]:
        """Hold `sequences` of the key's share while the block runs (400 / 429 when they do not fit)."""
        if sequences > self.max_sequences:
            raise APIError(
                400,
                f"{param}: this request asks for {sequences} sequences (prompts x n); an API key may have "
                f"at most {self.max_sequences} queued or running (DISTILLERY_MAX_SEQUENCES_PER_KEY). "
                "Split it into smaller requests.",
                param=param,
                code="too_many_sequences",
            )
        if self.held[key_id] + sequences > self.max_sequences:
            raise APIError(
                429,
                f"this API key already has {self.held[key_id]} sequences queued or running (at most "
                f"{self.max_sequences}); retry after {SHARE_RETRY_S} s",
                code="queue_share_exceeded",
                headers={"Retry-After": str(SHARE_RETRY_S)},
            )
        self.held[key_id] += sequences
        try:
            yield
        finally:
            self.held[key_id] -= sequences
            if self.held[key_id] <= 0:
                del self.held[key_id]

    async def charge(self, key_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Take the request's tokens from the key's budget (429 when the budget is short)."""
        if self.limiter is None:
            return
        cost = prompt_tokens + completion_tokens
        decision = await self.limiter.hit(key_id, cost)
        if not decision.allowed:
            raise APIError(
                429,
                f"token rate limit of {self.tokens_per_minute} tokens per minute exceeded for this API key "
                f"(this request counts {prompt_tokens} prompt + {completion_tokens} completion tokens); "
                f"retry after {decision.retry_after_s:.1f} s",
                code="token_rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(decision.retry_after_s)))},
            )
