"""The reward and value modules TRL's PPO is given, built around one frozen backbone.

TRL reads a reward or value model as `getattr(model, model.base_model_prefix)` (the
backbone, called with the policy's token ids) and `model.score` (a head over its
last hidden states). Two things are ours:

- `FinalAnswerReward` scores each rollout as the final answer an annotator would
  see: where a rollout hit the token cap without EOS, its score is read on that text
  followed by EOS, exactly as the reward model was trained (shared.models.reward).
  Without this, an answer cut mid-sentence would be scored on a state the reward
  model never saw — measured here, that quietly rewarded not finishing.
  An *empty* answer (EOS right after the generation prompt) scores below every other
  answer in its batch (`EMPTY_ANSWER_MARGIN` under the lowest). The reward model has
  never seen one — annotators are never asked to rank nothing — so its score there is
  an extrapolation, and on a "shorter is better" preference the extrapolation is the
  best score of all: measured in a loop run, the second cycle's PPO collapsed to empty
  answers (win rate under its judges 0.67, degenerate rate 1.0; the degeneracy gate
  stopped it). The gate rejects empty answers anyway; the optimiser is not rewarded for
  reaching what the gate will reject. This knows nothing of the annotators' preference.
- `SharedBackboneValue` is the critic: the same frozen backbone object with its own
  trainable head, initialised from the reward head. Only the head trains, so the
  critic costs one head and no second 135M copy of the model (peak RSS ~3.7 GB
  instead of ~10 GB for four full models).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

EMPTY_ANSWER_MARGIN = 1.0  # in reward units: a Bradley-Terry preference of ~73%


def floor_empty_answers(scores: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Each empty answer's score set to `EMPTY_ANSWER_MARGIN` below the lowest other
    score of the batch (all empty: their lowest). One rule for PPO, RLOO and GRPO."""
    if not bool(empty.any()):
        return scores
    others = scores[~empty]
    floor = (others.min() if others.numel() else scores.min()) - EMPTY_ANSWER_MARGIN
    return torch.where(empty, floor.to(scores.dtype), scores)


class _FinalAnswerBackbone(nn.Module):
    def __init__(self, backbone: nn.Module, eos_token_id: int, generation_suffix: list[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.eos_token_id = eos_token_id
        self.generation_suffix = generation_suffix  # what the chat template puts before an answer
        self.last_positions: torch.Tensor | None = None  # read by the score head of the same call
        self.empty_rows: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, **_: Any) -> SimpleNamespace:
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        # the last attended position of each row (argmax returns the first maximum)
        last = attention_mask.long().cumsum(1).argmax(1)
        open_rows = rows[input_ids[rows, last] != self.eos_token_id]
        self.last_positions, self.empty_rows = last, self._empty(input_ids, last)
        pad = torch.zeros((input_ids.shape[0], 1), dtype=input_ids.dtype, device=input_ids.device)
        ids = torch.cat([input_ids, pad], 1)
        mask = torch.cat([attention_mask, pad.to(attention_mask.dtype)], 1)
        ids[open_rows, last[open_rows] + 1] = self.eos_token_id
        mask[open_rows, last[open_rows] + 1] = 1
        positions = None
        if position_ids is not None:
            positions = torch.cat([position_ids, pad.to(position_ids.dtype)], 1)
            positions[open_rows, last[open_rows] + 1] = positions[open_rows, last[open_rows]] + 1
        hidden = self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                               return_dict=True).last_hidden_state
        hidden = hidden.clone()
        hidden[open_rows, last[open_rows]] = hidden[open_rows, last[open_rows] + 1]
        return SimpleNamespace(hidden_states=(hidden[:, :-1],))

    def _empty(self, input_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Rows whose answer is nothing: EOS directly after the generation prompt."""
        width = len(self.generation_suffix)
        empty = input_ids[torch.arange(input_ids.shape[0], device=input_ids.device), last] == self.eos_token_id
        if not width:
            return torch.zeros_like(empty)
        suffix = torch.tensor(self.generation_suffix, device=input_ids.device)
        offsets = torch.arange(-width, 0, device=input_ids.device)
        before = (last.unsqueeze(1) + offsets).clamp(min=0)
        return empty & (last >= width) & (input_ids.gather(1, before) == suffix).all(1)


class _FinalAnswerScore(nn.Module):
    """The reward head, with empty answers floored (see the module docstring). TRL calls
    the backbone and then this head on its output, one batch at a time."""

    def __init__(self, head: nn.Module, backbone: _FinalAnswerBackbone) -> None:
        super().__init__()
        self.head = head
        self._backbone = [backbone]  # a list: not registered twice as a submodule

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = self.head(hidden)
        backbone = self._backbone[0]
        if backbone.empty_rows is None or backbone.last_positions is None or not bool(backbone.empty_rows.any()):
            return scores
        rows = torch.arange(scores.shape[0], device=scores.device)
        final = scores[rows, backbone.last_positions].squeeze(-1)
        floored = floor_empty_answers(final, backbone.empty_rows)
        scores = scores.clone()
        scores[backbone.empty_rows] = floored[backbone.empty_rows].view(-1, 1, 1).expand(-1, scores.shape[1], 1)
        return scores


class FinalAnswerReward(nn.Module):
    base_model_prefix = "final_answer"

    def __init__(self, classifier: Any, eos_token_id: int, generation_suffix: list[int] | None = None) -> None:
        super().__init__()
        self.final_answer = _FinalAnswerBackbone(getattr(classifier, classifier.base_model_prefix), eos_token_id,
                                                 generation_suffix or [])
        self.score = _FinalAnswerScore(classifier.score, self.final_answer)
        self.config = classifier.config
        for parameter in self.parameters():
            parameter.requires_grad_(False)


class SharedBackboneValue(nn.Module):
    base_model_prefix = "backbone"

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        self.backbone = getattr(classifier, classifier.base_model_prefix)
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        head = classifier.score
        self.score = nn.Linear(head.in_features, head.out_features, bias=False)
        with torch.no_grad():
            self.score.weight.copy_(head.weight)
        self.config = classifier.config
