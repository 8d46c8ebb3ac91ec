"""Hidden preferences the simulated annotators follow. Only the annotators (and the
benchmark that measures the loop against them) know which one is in force: the
trainer learns it from the rankings alone.

`concise` is the default, chosen by measurement (docs/trainer.md, "The demo's
preference"): a person recognises a finished, to-the-point answer as better than one
cut off mid-sentence at the token cap, SmolLM2-135M's answers vary on it (about 15%
finish within 48 tokens), a reward model learns it from a few dozen rankings
(held-out pair accuracy ~0.95 on the pairs it decides), and PPO moves the policy
toward it within one demo cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Oracle = Callable[[str, list[str]], list[float]]

_ENDS_SENTENCE = re.compile(r"""[.!?)"'*\u201d]\s*$""")


def is_finished(answer: str) -> bool:
    """Ends like a sentence does, not mid-word at the token cap."""
    return bool(_ENDS_SENTENCE.search(answer.strip()))


def prefer_concise(prompt: str, answers: list[str]) -> list[float]:
    """Finished beats cut off; among equals, an answer shorter by a 15-word step wins
    (closer lengths tie); fewer than five words is not an answer and ranks last."""
    scores = []
    for answer in answers:
        words = len(answer.split())
        scores.append(-1.0 if words < 5 else float(is_finished(answer)) - 0.25 * (min(words, 60) // 15))
    return scores


def prefer_longer(prompt: str, answers: list[str]) -> list[float]:
    return [float(len(answer.strip())) for answer in answers]


def prefer_distinct_words(prompt: str, answers: list[str]) -> list[float]:
    """More different words, and no repetition: rewards varied, non-degenerate text."""
    return [float(len(set(answer.split()))) for answer in answers]


ORACLES: dict[str, Oracle] = {"concise": prefer_concise, "length": prefer_longer,
                              "distinct_words": prefer_distinct_words}
