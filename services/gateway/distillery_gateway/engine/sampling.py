"""Next-token choice and log-probabilities from raw logits (numpy), with OpenAI semantics."""

from __future__ import annotations

import numpy as np

from distillery_gateway.engine.types import SamplingParams


class Sampler:
    """Greedy at temperature 0, else temperature + nucleus (top_p) sampling from a seeded generator."""

    def __init__(self, params: SamplingParams, seed: int | None = None):
        self.greedy = params.greedy
        self.temperature, self.top_p = params.temperature, params.top_p
        self.rng = np.random.default_rng(params.seed if params.seed is not None else seed)

    def sample(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if self.top_p < 1.0:
            order = np.argsort(-probs)
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), self.top_p)) + 1]
            kept = probs[keep] / probs[keep].sum()
            return int(keep[self.rng.choice(len(keep), p=kept)])
        return int(self.rng.choice(len(probs), p=probs))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    top = z.max()
    return z - top - np.log(np.exp(z - top).sum())


def top_alternatives(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The `k` most likely tokens with their log-probabilities, most likely first."""
    if k <= 0:
        return []
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.argsort(-logprobs[idx])]
    return [(int(i), float(logprobs[i])) for i in idx]
