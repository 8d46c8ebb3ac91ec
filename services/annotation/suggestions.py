"""What the promoted reward model would rank, shown to annotators as an Argilla
suggestion (`RLHF_ANNOTATION__SUGGEST_RANKINGS=true`).

Annotators see the model's ranking beside the answers, each answer's score as the
model's probability that it is the best of the group (softmax of the rewards, what
Argilla's 0..1 suggestion score expects), and the version that made it (the agent).
Useful for review and for spotting where the model is wrong; it can also anchor
annotators, which is why it is off by default. Until a reward model is promoted no
suggestion is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from shared.contracts import RankingTask
from shared.models.reward_scorer import RewardScorer

from .schema import answer_field

QuestionId = Callable[[int], str]  # candidate count -> id of that dataset's rank question


def competition_ranks(scores: list[float]) -> list[int]:
    """1 = best; equal scores share a rank (1, 1, 3)."""
    return [1 + sum(other > score for other in scores) for score in scores]


def best_of_group(scores: list[float]) -> list[float]:
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    return [round(w / sum(weights), 6) for w in weights]


class RankingSuggester:
    def __init__(self, scorer: RewardScorer, question_id: QuestionId) -> None:
        self._scorer = scorer
        self._question_id = question_id

    def __call__(self, task: RankingTask) -> dict[str, Any] | None:
        prompt = [{"role": m.role, "content": m.content} for m in task.prompt]
        scores = self._scorer.rewards(prompt, [c.text for c in task.candidates])
        if scores is None or self._scorer.version is None:
            return None
        ranks = competition_ranks(scores)
        return {"question_id": self._question_id(len(task.candidates)), "type": "model",
                "value": [{"value": answer_field(slot), "rank": rank} for slot, rank in enumerate(ranks, start=1)],
                "score": best_of_group(scores), "agent": self._scorer.version}
