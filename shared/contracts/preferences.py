"""rlhf.preferences: pairwise chosen/rejected data, what reward models and DPO eat."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from .base import Event
from .conversation import Candidate, ChatMessage
from .ids import derived_id


PreferenceSource = Literal["ranking", "comparison", "edit", "regenerate"]


def feedback_preference_id_for(output_id: str, source: str, chosen_id: str, rejected_id: str) -> str:
    """A preference read from a user's own feedback (an edit, a regenerate) on one
    output: the same output redelivered yields the same id, so it counts once."""
    return derived_id("feedback-preference", output_id, source, chosen_id, rejected_id)


def pair_key_for(task_id: str, chosen_id: str, rejected_id: str) -> str:
    """A task's ordered candidate pair, the same in every revision of its ranking: what a
    store compares to tell an unchanged pair from a new one. (Schema 1 used it as the
    preference id.)"""
    return derived_id("preference", task_id, chosen_id, rejected_id)


def preference_id_for(task_id: str, chosen_id: str, rejected_id: str, ranking_id: str | None = None) -> str:
    """One preference per ranking revision and ordered candidate pair: a redelivered or
    re-collected revision yields the same id (a duplicate), a revised ranking new ids,
    so an event id never stands for two different margins. Without `ranking_id`, the
    pair key (schema-1 ids). A revised ranking replaces the older revision's pairs in
    the trainer's store; an unchanged pair keeps its place there and is not counted
    as new data again."""
    if ranking_id is None:
        return pair_key_for(task_id, chosen_id, rejected_id)
    return derived_id("preference", task_id, chosen_id, rejected_id, ranking_id)


class Preference(Event):
    """`chosen` was ranked above `rejected` for `prompt`.

    `margin` is how strongly (e.g. the mean rank gap over annotators); `agreement`
    the share of annotators who ordered the pair this way.

    Schema 2 added `revision_at` (optional, so schema-1 payloads still read): when the
    ranking this pair comes from reached its current state in Argilla. Consumers order
    the revisions of one task by it: a newer revision supersedes an older one, and an
    older one arriving late (a redelivery) is ignored.

    Schema 3 added `source` and `weight` (defaults keep older payloads readable):
    where the pair came from (a ranking task, a blind canary comparison, a user's
    edit, a user's regenerate) and how much the reward model should trust it
    relative to an annotator's ranking (1.0). Pairs from user feedback have no
    annotator: their `ranking_id` and `task_id` are derived from the output.
    """

    SCHEMA_VERSION: ClassVar[int] = 3

    preference_id: str = Field(min_length=1, max_length=128)
    ranking_id: str = Field(min_length=1, max_length=128)
    task_id: str = Field(min_length=1, max_length=128)
    output_id: str = Field(min_length=1, max_length=128)
    conversation_id: str | None = Field(default=None, max_length=200)
    prompt: list[ChatMessage] = Field(min_length=1, max_length=500)
    chosen: Candidate
    rejected: Candidate
    margin: float = Field(ge=0.0)
    agreement: float = Field(default=1.0, ge=0.0, le=1.0)
    annotator_count: int = Field(default=1, ge=1)
    guideline_version: str = Field(min_length=1, max_length=64)
    source: PreferenceSource = "ranking"
    weight: float = Field(default=1.0, gt=0.0, le=100.0)
    revision_at: AwareDatetime | None = Field(
        default=None, description="when the ranking revision was last changed (latest update of the record or "
                                  "any of its responses); None from schema-1 producers")

    @model_validator(mode="after")
    def _consistent(self) -> "Preference":
        if self.event_id != self.preference_id:
            raise ValueError("event_id must equal preference_id")
        if self.chosen.candidate_id == self.rejected.candidate_id:
            raise ValueError("rejected: must differ from chosen")
        return self

    @property
    def pair_key(self) -> str:
        return pair_key_for(self.task_id, self.chosen.candidate_id, self.rejected.candidate_id)

    @property
    def partition_key(self) -> str:
        return self.conversation_id or self.output_id
