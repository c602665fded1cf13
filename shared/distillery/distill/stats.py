"""Paired statistics of two methods answered on the same questions.

For per-question correctness of A and B: the paired table (both right, only A, only B, neither), the
exact McNemar p-value (two-sided binomial test of the discordant pairs: under "A and B are equally good"
each discordant question is A's with probability 1/2), and a bootstrap confidence interval of the
accuracy difference A - B (questions resampled with replacement, percentile interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedTable:
    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def accuracy_a(self) -> float:
        return (self.both + self.only_a) / self.n if self.n else 0.0

    @property
    def accuracy_b(self) -> float:
        return (self.both + self.only_b) / self.n if self.n else 0.0

    @property
    def difference(self) -> float:
        """Accuracy of A minus accuracy of B."""
        return (self.only_a - self.only_b) / self.n if self.n else 0.0


def paired_table(a: Sequence[bool], b: Sequence[bool]) -> PairedTable:
    """The 2x2 table of per-question correctness; ValueError unless both cover the same questions."""
    if len(a) != len(b):
        raise ValueError(f"paired results need the same questions: {len(a)} answers for A, {len(b)} for B")
    pairs = list(zip(map(bool, a), map(bool, b), strict=True))
    return PairedTable(
        both=pairs.count((True, True)),
        only_a=pairs.count((True, False)),
        only_b=pairs.count((False, True)),
        neither=pairs.count((False, False)),
    )


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be non-negative")
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / (1 << discordant))  # exact integers: no overflow for large tables


def bootstrap_ci(
    table: PairedTable, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy difference A - B.

    Resampling n questions with replacement only matters through how many drawn questions are only-A
    and only-B right, so the resamples are drawn as multinomial counts of the table's cells.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = table.n
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    probs = [table.only_a / n, table.only_b / n, (table.both + table.neither) / n]
    counts = rng.multinomial(n, probs, size=resamples)
    differences = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return (float(low), float(high))


def compare(a: Sequence[bool], b: Sequence[bool], resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Table, accuracies, difference, exact McNemar p and the 95 % bootstrap CI, as a JSON-ready dict."""
    table = paired_table(a, b)
    low, high = bootstrap_ci(table, resamples, 0.95, seed)
    return {
        **asdict(table),
        "n": table.n,
        "accuracy_a": round(table.accuracy_a, 4),
        "accuracy_b": round(table.accuracy_b, 4),
        "difference": round(table.difference, 4),
        "mcnemar_p": round(mcnemar_exact(table.only_a, table.only_b), 6),
        "ci95": [round(low, 4), round(high, 4)],
    }
