"""rlhf.comparisons: blind human A/B judgements of a canary against the stable version.

While a canary serves, the policy server answers a share of prompts from both the
canary and the stable version (the user sees only the routed answer); the pair
becomes a comparison task, annotators judge it without seeing version names, and
each judged record becomes one `CanaryComparison`. The trainer's canary judge
decides graduation or rollback from them (services/trainer/canary.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field, model_validator

from .base import Contract, Event, utc_now
from .ids import derived_id

ComparisonOutcome = Literal["canary", "stable", "tie"]


class ABPair(Contract):
    """Which candidate came from which version, on an output (or task) that is an A/B
    comparison of a canary against the stable version for the same prompt."""

    canary_version: str = Field(min_length=1, max_length=200)
    stable_version: str = Field(min_length=1, max_length=200)
    canary_candidate_id: str = Field(min_length=1, max_length=128)
    stable_candidate_id: str = Field(min_length=1, max_length=128)

    @model_validator(mode="after")
    def _two_sides(self) -> "ABPair":
        if self.canary_version == self.stable_version:
            raise ValueError("stable_version: must differ from canary_version")
        if self.canary_candidate_id == self.stable_candidate_id:
            raise ValueError("stable_candidate_id: must differ from canary_candidate_id")
        return self

    def check_candidates(self, candidate_ids: list[str]) -> None:
        """Raises ValueError unless the candidates are exactly the two sides."""
        if sorted(candidate_ids) != sorted([self.canary_candidate_id, self.stable_candidate_id]):
            raise ValueError(f"ab: an A/B comparison has exactly the candidates {self.canary_candidate_id!r} and "
                             f"{self.stable_candidate_id!r}, got {candidate_ids}")


def comparison_id_for(ranking_id: str) -> str:
    """One comparison per ranking revision of a comparison task (a re-poll is a duplicate)."""
    return derived_id("comparison", ranking_id)


class CanaryComparison(Event):
    """The annotators' verdict on one A/B record at one revision.

    `outcome` is the majority of the annotators' votes (a tie when they split evenly
    or judged the answers equal). A revised judgement of the same task (an annotator
    edited it) is a new event with the same `task_id` and a later `judged_at`; the
    judge keeps the latest per task.
    """

    comparison_id: str = Field(min_length=1, max_length=128)
    ranking_id: str = Field(min_length=1, max_length=128)
    task_id: str = Field(min_length=1, max_length=128)
    output_id: str = Field(min_length=1, max_length=128)
    canary_version: str = Field(min_length=1, max_length=200)
    stable_version: str = Field(min_length=1, max_length=200)
    outcome: ComparisonOutcome
    canary_votes: int = Field(default=0, ge=0)
    stable_votes: int = Field(default=0, ge=0)
    tie_votes: int = Field(default=0, ge=0)
    guideline_version: str = Field(min_length=1, max_length=64)
    judged_at: AwareDatetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _consistent(self) -> "CanaryComparison":
        if self.event_id != self.comparison_id:
            raise ValueError("event_id must equal comparison_id")
        if self.canary_votes + self.stable_votes + self.tie_votes < 1:
            raise ValueError("canary_votes: a comparison needs at least one vote")
        return self

    @property
    def partition_key(self) -> str:
        return self.canary_version
