"""One batched `generate` for requests with their own sampling parameters.

transformers' `generate` takes one temperature, one top_p and one max_new_tokens for
the whole batch, and samples from the global RNG. To put requests that differ in all
of those into one forward pass, generation runs greedy (no warpers of its own) with
two additions:

- `RowSampler`, a logits processor, chooses every row's next token itself: the argmax
  for a greedy row (the untouched logits, so a greedy row picks what it would alone),
  otherwise a draw at the row's temperature and top_p from its request's own
  `torch.Generator` when it has a seed (the draws of a seeded request then depend on
  its seed and logits only, not on who shares the batch). It returns scores that are
  -inf everywhere but the chosen token, so generate's argmax takes that token.
- `RowBudget`, a stopping criterion, marks a row done at its own max_tokens; EOS is
  generate's own criterion. A done row is fed padding until the batch ends; `finish`
  cuts every row at its own budget and EOS, so a done row's answer never grows.

Prompts are left-padded (decoder-only: every row's next token is at the last
position); generate derives position ids from the attention mask, so padding does
not shift a row's positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True)
class Sampling:
    """One request's prompt and parameters; it becomes `n` rows of the batch."""

    prompt_ids: list[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None


def finish(tokens: list[int], tokenizer: Any, max_tokens: int | None = None) -> Generation:
    """A row's answer: its first `max_tokens` tokens (a row that is done is fed padding
    while the batch runs on), up to EOS ("stop"; otherwise "length")."""
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    eos = tokenizer.eos_token_id
    finished = eos in tokens
    if finished:
        tokens = tokens[: tokens.index(eos)]
    tokens = [t for t in tokens if t != tokenizer.pad_token_id]
    return Generation(tokenizer.decode(tokens, skip_special_tokens=True), "stop" if finished else "length",
                      len(tokens))


def generate_batch(model: Any, tokenizer: Any, device: str, requests: list[Sampling],
                   stopping: list[Any]) -> list[list[Generation]]:
    """The answers of every request (n each, in order), from one `generate` call.
    `stopping`: extra stopping criteria (the pool's stop-on-close)."""
    rows = [(request, i) for request in requests for i in range(request.n)]
    width = max(len(r.prompt_ids) for r in requests)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r, _ in rows],
                             dtype=torch.long, device=device)
    attention = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r, _ in rows],
                             dtype=torch.long, device=device)
    budgets = [r.max_tokens for r, _ in rows]
    # Each addition costs a few small tensor ops per generated token, which on a small
    # model is a tenth of the step (module doc): left out where generate alone does the
    # same, an all-greedy batch (its argmax) and equal budgets (max_new_tokens).
    sampler = [] if all(r.temperature <= 0 for r in requests) else [RowSampler(requests, device)]
    budget = [] if len(set(budgets)) == 1 else [RowBudget(width, budgets, device)]
    output = model.generate(
        input_ids=input_ids, attention_mask=attention, max_new_tokens=max(budgets), do_sample=False,
        temperature=None, top_p=None, top_k=None, pad_token_id=pad,
        logits_processor=sampler, stopping_criteria=[*budget, *stopping],
    )
    answers: list[list[Generation]] = []
    row = 0
    for request in requests:
        answers.append([finish(output[row + i, width:].tolist(), tokenizer, request.max_tokens)
                        for i in range(request.n)])
        row += request.n
    return answers


class RowSampler:
    """Chooses each row's next token with its own request's parameters (module doc)."""

    def __init__(self, requests: list[Sampling], device: str) -> None:
        self._groups: list[tuple[int, int, Sampling, torch.Generator | None]] = []
        start = 0
        for request in requests:
            generator = None
            if request.seed is not None and request.temperature > 0:
                generator = torch.Generator(device=device)
                generator.manual_seed(request.seed)
            self._groups.append((start, start + request.n, request, generator))
            start += request.n

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = scores.argmax(dim=-1)
        for start, end, request, generator in self._groups:
            if request.temperature > 0:
                chosen[start:end] = _draw(scores[start:end], request.temperature, request.top_p, generator)
        picked = torch.full_like(scores, float("-inf"))
        picked.scatter_(1, chosen[:, None], 0.0)
        return picked


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Sample one token per row: temperature, then nucleus (the smallest set of tokens
    whose probability reaches top_p, as transformers' TopPLogitsWarper keeps)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(dim=-1) - ordered  # the mass of the tokens ranked above
        ordered = ordered.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, ordered)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


class RowBudget:
    """A stopping criterion: a row is done once it has generated its max_tokens."""

    def __init__(self, prompt_width: int, budgets: list[int], device: str) -> None:
        self._prompt_width = prompt_width
        self._budgets = torch.tensor(budgets, dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: object) -> torch.Tensor:
        return (input_ids.shape[1] - self._prompt_width) >= self._budgets
