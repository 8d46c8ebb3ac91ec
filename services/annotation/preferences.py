"""How annotators' ranks become preference pairs. Pure functions.

Aggregation rule (Borda count with ties):
- an annotator gives a candidate `n - rank` points for n candidates (ranks 1,2,3 give
  2,1,0; ties share: ranks 1,1,3 give 2,2,0);
- a candidate's score is its mean points over the annotators;
- every pair of candidates with different scores becomes one preference, the higher
  score chosen; equal scores (a tie, or annotators cancelling out) give no pair;
- margin = the score difference; for one annotator this is exactly the rank
  distance (ranks 1 and 3 -> margin 2), over several it is the mean rank distance;
- agreement = the share of annotators who put `chosen` strictly above `rejected`
  (ties and dissent both count against it), so 1.0 is unanimous.

Borda is used rather than majority-per-pair because it always yields a consistent
order (no cycles) and uses the full ranking, not just pairwise wins.

Ids: a preference is identified by its ranking revision and ordered pair, so a
re-poll of the same revision repeats its ids (dropped downstream) and a revised
ranking gets new ones; `revision_at` tells the trainer which revision is newer, and
the trainer's store lets the newer one replace the older one's pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import combinations

from shared.contracts import AnnotatorRanking, Preference, RankingResult, RankingTask, preference_id_for
from shared.contracts.preferences import PreferenceSource


def borda_scores(annotations: Sequence[AnnotatorRanking]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for annotation in annotations:
        n = len(annotation.ranks)
        for item in annotation.ranks:
            totals[item.candidate_id] = totals.get(item.candidate_id, 0.0) + (n - item.rank)
    return {cid: total / len(annotations) for cid, total in totals.items()}


def agreement(annotations: Sequence[AnnotatorRanking], chosen: str, rejected: str) -> float:
    votes = 0
    for annotation in annotations:
        ranks = {r.candidate_id: r.rank for r in annotation.ranks}
        if ranks[chosen] < ranks[rejected]:
            votes += 1
    return votes / len(annotations)


def mean_pairwise_agreement(annotations: Sequence[AnnotatorRanking]) -> float | None:
    """How often two annotators order a pair of candidates the same way (ties count as
    an order), over all annotator pairs and candidate pairs; None below 2 annotators.
    Exported as a metric: a drop is the first sign of unclear guidelines."""
    if len(annotations) < 2:
        return None
    same = total = 0
    for a, b in combinations(annotations, 2):
        ra = {r.candidate_id: r.rank for r in a.ranks}
        rb = {r.candidate_id: r.rank for r in b.ranks}
        for x, y in combinations(sorted(ra), 2):
            total += 1
            sa = (ra[x] > ra[y]) - (ra[x] < ra[y])
            sb = (rb[x] > rb[y]) - (rb[x] < rb[y])
            same += sa == sb
    return same / total if total else None


def preferences_for(result: RankingResult, task: RankingTask, revision_at: datetime | None = None,
                    source: PreferenceSource = "ranking") -> list[Preference]:
    """One preference per ordered pair of the aggregated ranking (see module doc).
    `revision_at`: when the ranking reached this revision (`rankings.Collected`);
    defaults to the result's completion time. `source`: "comparison" for a blind
    canary A/B record (the same aggregation: for two answers the Borda winner is the
    side with more annotator votes, so the pair agrees with the comparison's outcome)."""
    scores = borda_scores(result.annotations)
    candidates = {c.candidate_id: c for c in task.candidates}
    preferences = []
    for a, b in combinations([c.candidate_id for c in task.candidates], 2):
        if scores[a] == scores[b]:
            continue
        chosen, rejected = (a, b) if scores[a] > scores[b] else (b, a)
        pid = preference_id_for(task.task_id, chosen, rejected, result.ranking_id)
        preferences.append(Preference(
            event_id=pid,
            preference_id=pid,
            ranking_id=result.ranking_id,
            task_id=task.task_id,
            output_id=task.output_id,
            conversation_id=task.conversation_id,
            prompt=list(task.prompt),
            chosen=candidates[chosen],
            rejected=candidates[rejected],
            margin=round(scores[chosen] - scores[rejected], 6),
            agreement=agreement(result.annotations, chosen, rejected),
            annotator_count=len(result.annotations),
            guideline_version=result.guideline_version,
            source=source,
            revision_at=revision_at or result.completed_at,
        ))
    return preferences
