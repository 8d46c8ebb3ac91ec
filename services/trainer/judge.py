"""Who decides whether a candidate beats the incumbent: never the reward model the
candidate was optimised against (a policy that found that model's blind spots would
grade itself).

- `ensemble` (default): one Bradley-Terry head per disjoint fold of the training
  pairs (folds by prompt hash), over the frozen base backbone's features; the judge's
  score is their mean. No head saw all the data the policy's reward model saw, and
  each fits its own noise.
- `previous_rm`: the reward model that was promoted before this run (trained on
  older rankings); the ensemble stands in until there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.models.reward import Prompt, RewardModel

from .bradley_terry import fit_head, fold_of, pair_accuracy
from .features import FeatureCache, features_for
from .reward_model import preference_features
from .store import PreferenceRow


class Judge(Protocol):
    name: str

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[float]: ...


@dataclass
class FoldEnsembleJudge:
    backbone: RewardModel
    heads: list[Any]
    cache: FeatureCache | None = None
    fold_accuracy: list[float] = field(default_factory=list)  # each head on the other folds' pairs
    name: str = "ensemble"

    @classmethod
    def fit(cls, backbone: RewardModel, prefs: Sequence[PreferenceRow], folds: int, l2: float,
            cache: FeatureCache | None = None) -> "FoldEnsembleJudge":
        chosen, rejected = preference_features(backbone, prefs, cache)
        fold = [fold_of(p.prompt_hash, folds) for p in prefs]
        heads, accuracies = [], []
        for k in range(folds):
            mine = [i for i, f in enumerate(fold) if f == k]
            others = [i for i, f in enumerate(fold) if f != k]
            if not mine:
                continue
            head = fit_head(chosen[mine], rejected[mine], l2=l2)
            heads.append(head)
            accuracies.append(pair_accuracy(head, chosen[others], rejected[others]) if others else 0.0)
        if not heads:
            raise ValueError("the judge needs training pairs")
        return cls(backbone, heads, cache, accuracies)

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[float]:
        import torch

        features = features_for(self.backbone, prompts, answers, self.cache)
        scores = features.float() @ torch.stack(self.heads).T
        return [float(v) for v in scores.mean(1)]


@dataclass
class RewardModelJudge:
    model: RewardModel
    cache: FeatureCache | None = None
    name: str = "previous_rm"

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str]) -> list[float]:
        return self.model.scores_of(features_for(self.model, prompts, answers, self.cache))
