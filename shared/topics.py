"""Every topic of the loop, and the contract its values follow.

One place to look up a name, so producers and consumers cannot drift apart.
Dead-letter topics are per consumer group: one group's poison never mixes with
another's, and replaying a dead-letter topic feeds exactly one consumer.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contracts import (
    CanaryComparison,
    Event,
    ModelOutput,
    ModelUpdate,
    Preference,
    RankingResult,
    RankingTask,
    TrainingRunStatus,
)


@dataclass(frozen=True)
class Topic:
    name: str
    contract: type[Event]
    partitions: int = 3


OUTPUTS = Topic("rlhf.outputs", ModelOutput)
RANKING_TASKS = Topic("rlhf.ranking-tasks", RankingTask)
RANKINGS = Topic("rlhf.rankings", RankingResult)
PREFERENCES = Topic("rlhf.preferences", Preference)
TRAINING_RUNS = Topic("rlhf.training-runs", TrainingRunStatus, partitions=1)
MODEL_UPDATES = Topic("rlhf.model-updates", ModelUpdate, partitions=1)
COMPARISONS = Topic("rlhf.comparisons", CanaryComparison)

LOOP_TOPICS: tuple[Topic, ...] = (
    OUTPUTS,
    RANKING_TASKS,
    RANKINGS,
    PREFERENCES,
    TRAINING_RUNS,
    MODEL_UPDATES,
    COMPARISONS,
)

DEAD_LETTER_PREFIX = "rlhf.dlq."


def by_name(name: str) -> Topic:
    for topic in LOOP_TOPICS:
        if topic.name == name:
            return topic
    raise KeyError(f"unknown topic {name!r}; known: {[t.name for t in LOOP_TOPICS]}")


def dead_letter_topic(group_id: str) -> str:
    """The dead-letter topic of a consumer group."""
    return DEAD_LETTER_PREFIX + group_id
