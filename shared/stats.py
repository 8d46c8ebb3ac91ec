"""Small, exact statistics for paired comparisons: what the gates, the demo's live
win rate and the efficacy benchmark report. Pure functions, no SciPy at run time.

A paired comparison of two policies on the same prompts gives wins, losses and
ties. The sign test asks how likely at least that many wins are if neither policy
were better (ties carry no information and are set aside); the win rate counts a
tie as half a win, so an unchanged policy sits at exactly 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedComparison:
    wins: int
    losses: int
    ties: int

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else 0.5

    @property
    def p_value(self) -> float:
        """One-sided sign test: P(at least `wins` of the decided comparisons | no difference)."""
        return sign_test(self.wins, self.losses)

    def as_dict(self) -> dict[str, float]:
        return {"wins": self.wins, "losses": self.losses, "ties": self.ties, "win_rate": self.win_rate,
                "p_value": self.p_value}


def compare(candidate: Sequence[float], baseline: Sequence[float], tie_within: float = 0.0) -> PairedComparison:
    """Score pairs on the same prompts -> wins/losses/ties (|difference| <= tie_within is a tie)."""
    wins = losses = ties = 0
    for c, b in zip(candidate, baseline, strict=True):
        if abs(c - b) <= tie_within:
            ties += 1
        elif c > b:
            wins += 1
        else:
            losses += 1
    return PairedComparison(wins, losses, ties)


def sign_test(wins: int, losses: int) -> float:
    n = wins + losses
    if n == 0:
        return 1.0
    # log-space binomial tail: exact, and safe for thousands of comparisons
    log_terms = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
                 for k in range(wins, n + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for a proportion (ties as half successes are allowed)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """(mean, low, high): normal-approximation 95% interval of the mean."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half
