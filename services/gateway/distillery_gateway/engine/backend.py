"""The interface every student backend offers the serving layer (token ids in, text out)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence

from distillery_gateway.engine.codec import Codec
from distillery_gateway.engine.types import Delta, Generation, SamplingParams


class Backend(ABC):
    """A loaded student. Prompts arrive as token ids rendered by `codec`, so backends agree on input."""

    codec: Codec
    kind: str

    @abstractmethod
    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Complete one prompt (`params.n` choices)."""

    @abstractmethod
    def stream(self, prompt_ids: Sequence[int], params: SamplingParams) -> AsyncIterator[Delta | Generation]:
        """Queue the prompt now (QueueFull at once); iterate for text deltas, then the finished Generation."""

    @abstractmethod
    async def score(
        self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Log-probability of every token of each continuation after the prompt."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the model; called once no request uses it any more."""

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model."""
        return 0

    @property
    def running(self) -> int:
        """Sequences being generated (or scored) now."""
        return 0
