"""rlhf.model-updates: a model version was published, promoted or rolled back."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from .base import Contract, Event, utc_now
from .ids import derived_id

UpdateAction = Literal["published", "promoted", "graduated", "rolled_back"]
DecisionOutcome = Literal["graduate", "rollback", "keep"]
DecisionReason = Literal["evidence", "timeout", "operator"]


def model_update_id_for(model_version: str, action: str) -> str:
    return derived_id("model-update", model_version, action)


class CanaryDecision(Contract):
    """Why a canary graduated or was rolled back: the evidence and the rule's numbers.

    `log_likelihood_ratio` is the sequential probability ratio test's statistic
    (log P(data | not worse) / P(data | worse by the margin)); it crossed
    `graduate_at` or `rollback_at`, or the canary's time ran out (`reason` timeout).
    `posterior_win_rate` and `prob_not_worse` read the same counts as a Beta(1, 1)
    posterior on the canary's win rate, ties counted half a win.
    """

    outcome: DecisionOutcome
    reason: DecisionReason
    canary_version: str = Field(min_length=1, max_length=200)
    stable_version: str = Field(min_length=1, max_length=200)
    wins: int = Field(ge=0)
    losses: int = Field(ge=0)
    ties: int = Field(ge=0)
    log_likelihood_ratio: float
    graduate_at: float
    rollback_at: float
    posterior_win_rate: float = Field(ge=0.0, le=1.0)
    prob_not_worse: float = Field(ge=0.0, le=1.0)
    canary_age_s: float = Field(ge=0.0)
    decided_at: AwareDatetime = Field(default_factory=utc_now)

    def numbers(self) -> dict[str, float]:
        """The decision as flat numbers (event metrics, manifests, dashboards)."""
        return {"ab_wins": float(self.wins), "ab_losses": float(self.losses), "ab_ties": float(self.ties),
                "ab_llr": self.log_likelihood_ratio, "ab_posterior_win_rate": self.posterior_win_rate,
                "ab_prob_not_worse": self.prob_not_worse, "ab_canary_age_s": self.canary_age_s}


class ModelUpdate(Event):
    """Tells servers and deployers what to load.

    `published` = a candidate exists in the registry (gates may have failed:
    `gate_passed` and `gate_reasons` say); `promoted` = it should take traffic,
    `canary_fraction` of it first; `graduated` = the canary takes all traffic;
    `rolled_back` = return traffic to `previous_version`.

    Schema 2 added `graduated` and `decision` (the canary judge's evidence, on
    `graduated` and on a `rolled_back` the judge decided).
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    model_version: str = Field(min_length=1, max_length=200)
    action: UpdateAction
    run_id: str | None = Field(default=None, max_length=128)
    base_model: str = Field(min_length=1, max_length=500)
    adapter_uri: str | None = Field(default=None, max_length=2_000)
    reward_model_version: str | None = Field(default=None, max_length=200)
    previous_version: str | None = Field(default=None, max_length=200)
    gate_passed: bool = True
    gate_reasons: list[str] = Field(default_factory=list, max_length=50)
    canary_fraction: float = Field(default=1.0, ge=0.0, le=1.0)
    metrics: dict[str, float] = Field(default_factory=dict)
    decision: CanaryDecision | None = None

    @property
    def partition_key(self) -> str:
        return self.model_version
