"""The reward and value modules TRL's PPO is given, built around one frozen backbone.

TRL reads a reward or value model as `getattr(model, model.base_model_prefix)` (the
backbone, called with the policy's token ids) and `model.score` (a head over its
last hidden states). Two things are ours:

- `FinalAnswerReward` scores each rollout as the final answer an annotator would
  see: where a rollout hit the token cap without EOS, its score is read on that text
  followed by EOS, exactly as the reward model was trained (shared.models.reward).
  Without this, an answer cut mid-sentence would be scored on a state the reward
  model never saw — measured here, that quietly rewarded not finishing.
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


class _FinalAnswerBackbone(nn.Module):
    def __init__(self, backbone: nn.Module, eos_token_id: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.eos_token_id = eos_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, **_: Any) -> SimpleNamespace:
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        # the last attended position of each row (argmax returns the first maximum)
        last = attention_mask.long().cumsum(1).argmax(1)
        open_rows = rows[input_ids[rows, last] != self.eos_token_id]
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


class FinalAnswerReward(nn.Module):
    base_model_prefix = "final_answer"

    def __init__(self, classifier: Any, eos_token_id: int) -> None:
        super().__init__()
        self.final_answer = _FinalAnswerBackbone(getattr(classifier, classifier.base_model_prefix), eos_token_id)
        self.score = classifier.score
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
