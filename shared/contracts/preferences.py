"""rlhf.preferences: pairwise chosen/rejected data, what reward models and DPO eat."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Event
from .conversation import Candidate, ChatMessage
from .ids import derived_id


def preference_id_for(task_id: str, chosen_id: str, rejected_id: str) -> str:
    """One preference per task and ordered candidate pair. A re-ranking of the same
    task that agrees yields the same id, so it never counts twice toward training."""
    return derived_id("preference", task_id, chosen_id, rejected_id)


class Preference(Event):
    """`chosen` was ranked above `rejected` for `prompt`.

    `margin` is how strongly (e.g. the mean rank gap over annotators); `agreement`
    the share of annotators who ordered the pair this way.
    """

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

    @model_validator(mode="after")
    def _consistent(self) -> "Preference":
        if self.event_id != self.preference_id:
            raise ValueError("event_id must equal preference_id")
        if self.chosen.candidate_id == self.rejected.candidate_id:
            raise ValueError("rejected: must differ from chosen")
        return self

    @property
    def partition_key(self) -> str:
        return self.conversation_id or self.output_id
