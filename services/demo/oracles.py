"""Hidden preferences the simulated annotators follow. Simple on purpose: the point
of the demo is that the loop learns *some* fixed preference, visibly, in minutes."""

from __future__ import annotations

from collections.abc import Callable

Oracle = Callable[[str, list[str]], list[float]]


def prefer_longer(prompt: str, answers: list[str]) -> list[float]:
    return [float(len(answer.strip())) for answer in answers]


def prefer_distinct_words(prompt: str, answers: list[str]) -> list[float]:
    """More different words, and no repetition: rewards varied, non-degenerate text."""
    return [float(len(set(answer.split()))) for answer in answers]


ORACLES: dict[str, Oracle] = {"length": prefer_longer, "distinct_words": prefer_distinct_words}
