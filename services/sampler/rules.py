"""Sampling rules as configuration: which outputs a rule looks at, how it scores them,
and how many it may take."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from shared.contracts import ModelOutput

Strategy = Literal["uniform", "feedback", "uncertainty", "novelty"]
NEGATIVE_FEEDBACK = frozenset({"thumbs_down", "edit", "regenerate"})


class OutputFilter(BaseModel):
    """All given conditions must hold (an empty filter matches everything)."""

    apps: list[str] = Field(default_factory=list)
    tenants: list[str] = Field(default_factory=list)
    tags_any: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    feedback_any: list[str] = Field(default_factory=list, description="e.g. [thumbs_down, regenerate]")
    min_candidates: int = Field(default=1, ge=1)

    def matches(self, output: ModelOutput) -> bool:
        if self.apps and output.app not in self.apps:
            return False
        if self.tenants and output.tenant not in self.tenants:
            return False
        if self.tags_any and not set(self.tags_any) & set(output.tags):
            return False
        if self.sources and output.source not in self.sources:
            return False
        if self.feedback_any and not {f.kind for f in output.feedback} & set(self.feedback_any):
            return False
        return len(output.candidates) >= self.min_candidates

    def matches_everything(self) -> bool:
        """No condition at all (every output has a candidate): the sampler then skips
        `matches`, which it would otherwise call for every output."""
        return (not (self.apps or self.tenants or self.tags_any or self.sources or self.feedback_any)
                and self.min_candidates <= 1)


class Budget(BaseModel):
    """At most `max_tasks` per window; within the window the best `max_tasks` by score
    win (top-k), or, for `uniform`, a uniform reservoir sample, so early arrivals are
    not favoured. Tasks go out when the window closes."""

    max_tasks: int = Field(ge=1)


class Quota(BaseModel):
    """At most `max_per_window` selections per value of `by` (one app cannot eat the budget)."""

    by: Literal["app", "tenant", "tag"]
    max_per_window: int = Field(ge=1)


class SamplingRule(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    strategy: Strategy
    filter: OutputFilter = OutputFilter()
    rate: float = Field(default=1.0, ge=0.0, le=1.0,
                        description="uniform: share selected; others: share of those that pass")
    min_score: float | None = Field(default=None, description="novelty: minimum novelty in [0,1]")
    max_margin: float | None = Field(default=None, ge=0.0,
                                     description="uncertainty: select when top-2 reward margin <= this")
    fallback_rate: float = Field(default=0.0, ge=0.0, le=1.0,
                                 description="uncertainty without a reward model: uniform rate instead")
    budget: Budget | None = None
    quota: Quota | None = None
    window_s: float = Field(default=3600.0, gt=0, description="budget and quota window")

    @model_validator(mode="after")
    def _strategy_options(self) -> "SamplingRule":
        if self.strategy == "novelty" and self.min_score is None and self.budget is None:
            raise ValueError("novelty needs min_score or a budget (top-k by novelty)")
        return self


def default_rules() -> list[SamplingRule]:
    """Negative feedback always, plus a 5% uniform sample."""
    return [
        SamplingRule(name="negative-feedback", strategy="feedback",
                     filter=OutputFilter(feedback_any=sorted(NEGATIVE_FEEDBACK))),
        SamplingRule(name="uniform-5pct", strategy="uniform", rate=0.05),
    ]
