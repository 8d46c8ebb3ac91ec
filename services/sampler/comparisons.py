"""Blind A/B comparison tasks: a canary's answer against the stable version's.

While a canary serves, the policy server answers a share of prompts from both
versions and marks the output with `ab` (contracts/comparisons.py). Such an output is
evidence for the canary judge, not ordinary ranking data, so the sampler decides it
before its configured rules, on a path of its own:

- it becomes a comparison task (`ab` copied, exactly the two candidates, no candidate
  completion: a third answer would make it a ranking, not an A/B judgement);
- the two candidates are put in an order fixed by the output id but otherwise random,
  so annotators cannot learn that "A is the canary"; a redelivery gets the same order;
- it skips the near-duplicate prompt check (a popular prompt is exactly where the two
  versions should be compared) and does not record its prompt hash either, so for
  ordinary outputs the dedupe behaves as if the comparison had not happened;
- at most `max_per_window` comparison tasks per `window_s`; over that the output goes
  on to the ordinary rules like any other output (its dedupe, rules and quotas).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.contracts import Candidate, ModelOutput

from .scoring import stable_fraction

COMPARISON_RULE = "canary-ab"  # the SamplingDecision rule, the quota's and the metrics' rule name
COMPARISON_STRATEGY = "comparison"
COMPARISON_QUOTA_VALUE = "-"  # one quota for all comparisons: it bounds the annotators' load


class ComparisonSettings(BaseModel):
    enabled: bool = Field(default=True, description="A/B outputs become comparison tasks before any rule")
    max_per_window: int = Field(default=500, ge=1, description="comparison tasks per window; more fall through")
    window_s: float = Field(default=3600.0, gt=0, description="the comparison quota's window")


def blind_order(output: ModelOutput) -> list[Candidate]:
    """The output's two A/B candidates in an order decided by a coin fixed by the
    output id (replayable, independent of which side the capture listed first)."""
    assert output.ab is not None
    by_id = {c.candidate_id: c for c in output.candidates}
    pair = [by_id[output.ab.canary_candidate_id], by_id[output.ab.stable_candidate_id]]
    return pair[::-1] if stable_fraction(COMPARISON_RULE, output.output_id) < 0.5 else pair
