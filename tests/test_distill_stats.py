"""Paired statistics: the 2x2 table, the exact McNemar p-value and the bootstrap CI of the difference."""

from __future__ import annotations

import pytest

from distillery.distill.stats import PairedTable, bootstrap_ci, compare, mcnemar_exact, paired_table


def test_paired_table_counts_the_four_cells():
    a = [True, True, False, False, True, False]
    b = [True, False, True, False, False, False]
    table = paired_table(a, b)
    assert table == PairedTable(both=1, only_a=2, only_b=1, neither=2)
    assert (
        table.n == 6 and table.accuracy_a == pytest.approx(0.5) and table.accuracy_b == pytest.approx(1 / 3)
    )
    assert table.difference == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="same questions"):
        paired_table([True], [True, False])


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        # 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096 (scipy.stats.binomtest(2, 12).pvalue).
        (10, 2, 0.03857421875),
        (2, 10, 0.03857421875),
        (0, 5, 0.0625),  # 2 / 2**5
        (7, 7, 1.0),  # capped at 1
        (0, 0, 1.0),  # no discordant pair: no evidence either way
        # 2 * P(X <= 59), X ~ Bin(150, 1/2) (scipy.stats.binomtest(59, 150).pvalue).
        (91, 59, 0.011121593847224862),
    ],
)
def test_mcnemar_exact_on_known_tables(only_a: int, only_b: int, expected: float):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-9)


def test_bootstrap_ci_brackets_the_difference_and_is_reproducible():
    table = PairedTable(both=200, only_a=60, only_b=30, neither=210)  # n = 500, difference +0.06
    low, high = bootstrap_ci(table, seed=7)
    assert low < table.difference < high
    # The normal approximation of the paired difference: sd = sqrt((b + c) - (b - c)^2 / n) / n.
    sd = ((60 + 30) - 30**2 / 500) ** 0.5 / 500
    assert high - low == pytest.approx(2 * 1.96 * sd, rel=0.1)
    assert bootstrap_ci(table, seed=7) == (low, high)
    assert bootstrap_ci(PairedTable(5, 0, 0, 5)) == (0.0, 0.0)


def test_compare_reports_table_p_and_ci():
    report = compare([True] * 10 + [False] * 2, [False] * 10 + [True] * 2)
    assert (report["only_a"], report["only_b"], report["n"]) == (10, 2, 12)
    assert report["mcnemar_p"] == pytest.approx(0.038574, abs=1e-6)
    assert report["difference"] == pytest.approx(8 / 12, abs=1e-4)
    assert report["ci95"][0] <= report["difference"] <= report["ci95"][1]
