"""How the annotators' judgements of a blind A/B record become a CanaryComparison.
Pure functions.

Each annotator's ranking of the two answers is one vote: the canary's answer ranked
above the stable one's is a canary vote, below a stable vote, the same rank a tie
vote. The outcome is the side with more votes; equal counts (a split, or only tie
votes) are a tie. For two answers this is exactly the Borda order the preference
pair is made from (preferences.py), so a comparison and its preference never
disagree: a "tie" is the case that yields no preference.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from shared.contracts import AnnotatorRanking, RankingResult, RankingTask
from shared.contracts.comparisons import CanaryComparison, ComparisonOutcome, comparison_id_for


def votes(annotations: Sequence[AnnotatorRanking], canary_id: str, stable_id: str) -> tuple[int, int, int]:
    """(canary, stable, tie) votes over the annotators."""
    canary = stable = tie = 0
    for annotation in annotations:
        ranks = {r.candidate_id: r.rank for r in annotation.ranks}
        if ranks[canary_id] < ranks[stable_id]:
            canary += 1
        elif ranks[stable_id] < ranks[canary_id]:
            stable += 1
        else:
            tie += 1
    return canary, stable, tie


def outcome_of(canary_votes: int, stable_votes: int) -> ComparisonOutcome:
    if canary_votes > stable_votes:
        return "canary"
    if stable_votes > canary_votes:
        return "stable"
    return "tie"


def comparison_for(result: RankingResult, task: RankingTask, judged_at: datetime) -> CanaryComparison:
    """The verdict on one revision of a comparison record; `judged_at` is the
    revision's time (`rankings.revision_time`), what the trainer's judge orders
    revisions of one task by. Raises ValueError for a task that is not an A/B pair."""
    if task.ab is None:
        raise ValueError(f"task {task.task_id} is not an A/B comparison")
    ab = task.ab
    canary, stable, tie = votes(result.annotations, ab.canary_candidate_id, ab.stable_candidate_id)
    comparison_id = comparison_id_for(result.ranking_id)
    return CanaryComparison(
        event_id=comparison_id,
        comparison_id=comparison_id,
        ranking_id=result.ranking_id,
        task_id=task.task_id,
        output_id=task.output_id,
        canary_version=ab.canary_version,
        stable_version=ab.stable_version,
        outcome=outcome_of(canary, stable),
        canary_votes=canary,
        stable_votes=stable,
        tie_votes=tie,
        guideline_version=result.guideline_version,
        judged_at=judged_at,
    )
