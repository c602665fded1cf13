"""What the serving layer asks a backend for, and what it gets back (no I/O, no framework)."""

from __future__ import annotations

from dataclasses import dataclass, field


class EngineError(Exception):
    """Base of the errors a backend raises; the serving layer maps each to an HTTP status."""


class QueueFull(EngineError):
    """The request queue is full: back-pressure (503 + Retry-After)."""


class QueueTimeout(QueueFull):
    """A request waited for the model longer than its queue deadline (503 + Retry-After)."""


class ModelNotReady(EngineError):
    """No model is loaded yet, or the backend was closed under the request (503 + Retry-After)."""


class UpstreamError(EngineError):
    """The vLLM server failed or could not be reached (502), or rejected the request (`status` 4xx)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SamplingParams:
    """Generation knobs with OpenAI semantics (temperature 0 = greedy)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None  # alternatives per generated token; 0 = the chosen token only
    echo: bool = False  # also return the prompt's token logprobs (completions `echo` + `logprobs`)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class TokenLogprob:
    """One token with its log-probability and the most likely alternatives at its position."""

    token: str
    logprob: float | None
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Choice:
    text: str
    finish_reason: str  # "stop" | "length"
    num_tokens: int
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Generation:
    choices: list[Choice]
    prompt_tokens: int
    prompt_logprobs: list[TokenLogprob] | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices)


@dataclass
class Delta:
    """A piece of streamed text for choice `index`; the last one of a choice carries `finish_reason`."""

    index: int
    text: str
    finish_reason: str | None = None
