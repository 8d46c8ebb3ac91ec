"""rlhf.ranking-tasks: an output chosen for human ranking."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from .base import Contract, Event
from .comparisons import ABPair
from .conversation import Candidate, ChatMessage
from .ids import derived_id

MIN_RANKED = 2
MAX_RANKED = 5


def task_id_for(output_id: str) -> str:
    """One output becomes at most one task, whatever the redeliveries."""
    return derived_id("task", output_id)


class SamplingDecision(Contract):
    """Why the sampler picked this output: shown to annotators, exported as metrics."""

    rule: str = Field(min_length=1, max_length=100)
    strategy: str = Field(min_length=1, max_length=100)
    score: float = 0.0


class RankingTask(Event):
    """A prompt and 2..5 candidate answers for annotators to rank.

    Schema 2 added `ab` (optional): a blind A/B comparison task (exactly the two
    candidates of a canary and the stable version, in random order), pushed to the
    comparison dataset instead of a ranking one.
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    task_id: str = Field(min_length=1, max_length=128)
    output_id: str = Field(min_length=1, max_length=128)
    conversation_id: str | None = Field(default=None, max_length=200)
    prompt: list[ChatMessage] = Field(min_length=1, max_length=500)
    candidates: list[Candidate] = Field(min_length=MIN_RANKED, max_length=MAX_RANKED)
    sampling: SamplingDecision
    app: str | None = Field(default=None, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=50)
    ab: ABPair | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "RankingTask":
        if self.event_id != self.task_id:
            raise ValueError("event_id must equal task_id")
        ids = [c.candidate_id for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise ValueError("candidates: candidate_id values must be unique")
        if self.ab is not None:
            self.ab.check_candidates(ids)
        return self

    @property
    def partition_key(self) -> str:
        return self.conversation_id or self.output_id
