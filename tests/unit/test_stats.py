"""The paired-comparison statistics the gates, the demo probe and the efficacy
benchmark report."""

from __future__ import annotations

import math

from shared.stats import PairedComparison, compare, mean_interval, sign_test, wilson_interval


def test_sign_test_is_the_exact_binomial_tail() -> None:
    assert sign_test(5, 0) == 1 / 32
    assert math.isclose(sign_test(3, 3), 42 / 64)  # P(X >= 3 | n = 6, p = 1/2)
    assert sign_test(0, 0) == 1.0  # nothing decided: no evidence at all
    assert sign_test(0, 7) == 1.0
    assert 0 < sign_test(600, 400) < 1e-9  # log space: no overflow for thousands of comparisons


def test_an_unchanged_policy_ties_everywhere_and_shows_no_evidence() -> None:
    same = [0.3, -1.0, 2.5, 0.0]
    comparison = compare(same, same)
    assert comparison == PairedComparison(wins=0, losses=0, ties=4)
    assert comparison.win_rate == 0.5 and comparison.p_value == 1.0


def test_compare_counts_wins_losses_and_ties_within_a_tolerance() -> None:
    comparison = compare([1.0, 2.0, 0.0, 5.0], [0.0, 2.05, 1.0, 4.0], tie_within=0.1)
    assert (comparison.wins, comparison.losses, comparison.ties) == (2, 1, 1)
    assert comparison.win_rate == 2.5 / 4
    assert comparison.as_dict()["p_value"] == sign_test(2, 1)


def test_intervals() -> None:
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2
    low, high = wilson_interval(14, 20)
    assert low < 0.7 < high
    mean, low, high = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and low < 2.5 < high and math.isclose(2.5 - low, high - 2.5)
    assert math.isnan(mean_interval([])[0])  # nothing measured
