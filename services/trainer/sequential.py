"""The decision rule of the canary judge: Wald's sequential probability ratio test on
the canary's win rate in blind A/B comparisons.

p = P(annotators prefer the canary's answer), a tie counted half a win. Two simple
hypotheses:
    H_ok:    p = 0.5            the canary is as good as the stable version
    H_worse: p = 0.5 - margin   the canary is worse by the margin
After each comparison the log likelihood ratio log P(data | H_ok) / P(data | H_worse)
moves by log(0.5 / p_w) for a win, log(0.5 / (1 - p_w)) for a loss, half of each for
a tie (p_w = 0.5 - margin). Crossing `graduate_at` = log((1 - b) / a) accepts H_ok
(graduate), crossing `rollback_at` = log(b / (1 - a)) accepts H_worse (roll back),
where a = false_graduation_rate (graduating a canary that is worse by the margin) and
b = false_rollback_rate (rolling back one that is as good). Wald's bounds hold these
error rates however often the test is looked at, which is the point of a sequential
test: it can decide after every comparison without inflating its errors, and stops as
soon as the evidence suffices (a clearly better canary after ~20-30 comparisons at the
defaults, an equal one after ~150, a clearly worse one after ~50).

A canary better than the stable version graduates fastest ("better or not worse by
the margin" both graduate). `min_comparisons` guards the first few records (an early
crossing from 3 lucky wins is possible with loose error rates). The Beta(1, 1)
posterior on p is reported beside the statistic, because "P(canary not worse) = 0.97"
reads better on a dashboard than a log likelihood ratio; it does not decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, model_validator

Verdict = Literal["graduate", "rollback", "continue"]


class SequentialTestOptions(BaseModel):
    margin: float = Field(default=0.1, gt=0.0, lt=0.5, description="worse by this much (win rate 0.5 - margin) is"
                          " what a rollback guards against; within it the canary graduates")
    false_graduation_rate: float = Field(default=0.05, gt=0.0, lt=0.5,
                                         description="chance of graduating a canary worse by the margin")
    false_rollback_rate: float = Field(default=0.05, gt=0.0, lt=0.5,
                                       description="chance of rolling back a canary as good as the stable version")
    min_comparisons: int = Field(default=10, ge=1, description="no decision on evidence before this many")

    @model_validator(mode="after")
    def _rates(self) -> "SequentialTestOptions":
        if self.false_graduation_rate + self.false_rollback_rate >= 1.0:
            raise ValueError("false_graduation_rate + false_rollback_rate must be below 1")
        return self


@dataclass(frozen=True)
class Counts:
    wins: int = 0
    losses: int = 0
    ties: int = 0

    @property
    def total(self) -> int:
        return self.wins + self.losses + self.ties


@dataclass(frozen=True)
class Evidence:
    counts: Counts
    log_likelihood_ratio: float
    graduate_at: float
    rollback_at: float
    posterior_win_rate: float
    prob_not_worse: float  # posterior P(p > 0.5 - margin)
    verdict: Verdict


def evaluate(counts: Counts, options: SequentialTestOptions) -> Evidence:
    a, b = options.false_graduation_rate, options.false_rollback_rate
    worse = 0.5 - options.margin
    win_step, loss_step = math.log(0.5 / worse), math.log(0.5 / (1.0 - worse))
    llr = counts.wins * win_step + counts.losses * loss_step + counts.ties * 0.5 * (win_step + loss_step)
    graduate_at, rollback_at = math.log((1.0 - b) / a), math.log(b / (1.0 - a))
    alpha, beta = 1.0 + counts.wins + 0.5 * counts.ties, 1.0 + counts.losses + 0.5 * counts.ties
    verdict: Verdict = "continue"
    if counts.total >= options.min_comparisons:
        verdict = "graduate" if llr >= graduate_at else "rollback" if llr <= rollback_at else "continue"
    return Evidence(counts=counts, log_likelihood_ratio=llr, graduate_at=graduate_at, rollback_at=rollback_at,
                    posterior_win_rate=alpha / (alpha + beta), prob_not_worse=1.0 - beta_cdf(worse, alpha, beta),
                    verdict=verdict)


def beta_cdf(x: float, alpha: float, beta: float, steps: int = 2000) -> float:
    """P(X <= x) for X ~ Beta(alpha, beta), by the midpoint rule on the log density
    (the standard library has no incomplete beta function; 2000 steps are accurate to
    ~1e-4 for the counts a canary collects, which is all a dashboard needs)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_norm = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)

    def density(t: float) -> float:
        return math.exp((alpha - 1.0) * math.log(t) + (beta - 1.0) * math.log1p(-t) - log_norm)

    h = 1.0 / steps
    below = sum(density((i + 0.5) * h) for i in range(steps) if (i + 0.5) * h < x)
    return min(1.0, max(0.0, below * h))
