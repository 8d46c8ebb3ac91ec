"""A linear Bradley-Terry head on frozen features: P(chosen > rejected) =
sigmoid(w . (f_chosen - f_rejected)).

This is logistic regression on feature differences, so a head over every
preference collected so far trains in well under a second: each cycle refits from
all the data instead of warm-starting from the last head, and what carries over
between cycles is the data itself. Features are standardised for the fit (the L2
penalty then treats every dimension alike); the returned vector works on raw
features. Deterministic: zero start, full-batch steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fit_head(chosen: Any, rejected: Any, *, l2: float = 0.01, steps: int = 300, learning_rate: float = 0.05,
             weights: Sequence[float] | None = None) -> Any:
    """Head vector (hidden_size,) for `chosen[i]` preferred over `rejected[i]`.
    `weights`: each pair's share of the loss (a user's edit may count less than an
    annotator's ranking); None weighs every pair alike."""
    import torch

    diffs = (chosen - rejected).float()
    if len(diffs) == 0:
        return torch.zeros(chosen.shape[1])
    w_pairs = torch.ones(len(diffs)) if weights is None else torch.tensor(list(weights), dtype=torch.float32)
    w_pairs = w_pairs / w_pairs.mean()
    scale = diffs.std(0, unbiased=False) + 1e-6 if len(diffs) > 1 else diffs.abs().mean(0) + 1e-6
    x = diffs / scale
    w = torch.zeros(x.shape[1], requires_grad=True)
    optimiser = torch.optim.Adam([w], lr=learning_rate)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = (w_pairs * torch.nn.functional.softplus(-(x @ w))).mean() + l2 * (w * w).sum()
        loss.backward()
        optimiser.step()
    return (w.detach() / scale).float()


def pair_accuracy(head: Any, chosen: Any, rejected: Any) -> float:
    """Share of pairs the head orders like the humans did (ties count as misses)."""
    if len(chosen) == 0:
        return 0.0
    margin = (chosen - rejected).float() @ head
    return float((margin > 0).float().mean())


def fold_of(prompt_hash: str, folds: int) -> int:
    """A prompt's fold: stable across runs, and all pairs of one prompt share it."""
    return int(prompt_hash[8:16], 16) % folds
